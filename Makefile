# dynamic_ofa_ros: bootstrap, build, test, demo on a machine without ROS.
#
#   make demo     set up .venv + colcon build (idempotent), then run the demo
#   make test     set up + build, lint, package check, full pytest suite against the install space
#   make ROS_DISTRO=jazzy test-ros   the same package on ROS 2 Jazzy: its ROS-facing tests
#
# Other targets: venv build lint check-package pytest test-ros bench soak shell clean distclean help.
# Variables: ROS_DISTRO (kilted | jazzy), VENV (default .venv), PYTHON (python3.11), PYTEST_ARGS,
# DEMO_ARGS, BENCH_ARGS, NODE_BENCH_ARGS, SOAK_ARGS.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# The ROS 2 distro of the PyPI wheels: kilted (default: .venv, build/, install/) or jazzy
# (.venv-jazzy with requirements-jazzy.txt, build-jazzy/, install-jazzy/; its non-ROS packages
# are .venv's, shared by scripts/share_site_packages.py). Only `make ROS_DISTRO=jazzy ...` selects
# Jazzy: a ROS_DISTRO exported by a sourced system ROS 2 is ignored here.
ifneq ($(origin ROS_DISTRO),command line)
ROS_DISTRO := kilted
endif
ifeq ($(ROS_DISTRO),kilted)
VARIANT :=
VENV ?= .venv
REQUIREMENTS := requirements.txt requirements-dev.txt
SHARE_FROM :=
else ifeq ($(ROS_DISTRO),jazzy)
VARIANT := -jazzy
MAIN_VENV ?= .venv
VENV := .venv-jazzy
REQUIREMENTS := requirements-jazzy.txt
SHARE_FROM := $(MAIN_VENV)
else
$(error ROS_DISTRO=$(ROS_DISTRO) is not supported: kilted (default) or jazzy)
endif
BUILD_DIR := build$(VARIANT)
INSTALL_DIR := install$(VARIANT)
LOG_DIR := log$(VARIANT)
PYTHON ?= python3.11
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=
NODE_BENCH_ARGS ?=

VENV_ABS := $(abspath $(VENV))
VENV_STAMP := $(VENV)/.dofa-venv.stamp
BUILD_STAMP := $(INSTALL_DIR)/.dofa-build.stamp
ROS_ENV := VENV=$(VENV_ABS) DOFA_INSTALL=$(abspath $(INSTALL_DIR)) scripts/ros-env
# Random start for this run's ROS domain; test/conftest.py locks a free one from there on.
ROS_DOMAIN_ID ?= $(shell echo $$(( RANDOM % 100 + 1 )))

# A rebuild is needed when the interfaces or CMake/package files change, or when files are
# added to / removed from an installed directory (--symlink-install links files one by one;
# edits to existing files are live without rebuilding). Directory mtimes track the latter.
BUILD_INPUTS := Makefile package.xml CMakeLists.txt scripts/entry_point.in \
	$(wildcard msg/*.msg srv/*.srv) \
	$(shell find dynamic_ofa_ros offline_tools launch config -type d -not -name __pycache__ 2>/dev/null)

# The ROS-facing tests, which `make ROS_DISTRO=jazzy test-ros` runs against the Jazzy wheels:
# interfaces, the node's services, topics, bad input, reliability and lifecycle.
ROS_TESTS := test/test_interfaces.py test/node/test_node_services.py test/node/test_node_topics.py \
	test/node/test_node_bad_input.py test/node/test_reliability.py test/node/test_lifecycle.py

.PHONY: help venv setup build lint check-package pytest test test-ros demo bench soak shell clean distclean

help:
	@sed -n '2,10p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------------------------------------
venv setup: $(VENV_STAMP)

$(VENV_STAMP): $(REQUIREMENTS) scripts/bootstrap.sh scripts/patch_ros_cmake.py \
		$(if $(SHARE_FROM),$(SHARE_FROM)/.dofa-venv.stamp scripts/share_site_packages.py)
	scripts/bootstrap.sh "$(VENV)" "$(PYTHON)" $(addprefix -r ,$(REQUIREMENTS)) \
		$(if $(SHARE_FROM),--share-from "$(SHARE_FROM)")
	touch "$@"

ifneq ($(SHARE_FROM),)
# The Jazzy venv shares the main (Kilted) venv's packages: that one is set up first.
$(SHARE_FROM)/.dofa-venv.stamp: requirements.txt requirements-dev.txt scripts/bootstrap.sh scripts/patch_ros_cmake.py
	$(MAKE) --no-print-directory ROS_DISTRO=kilted VENV="$(SHARE_FROM)" venv
endif

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(VENV_STAMP) $(BUILD_INPUTS)
	@mkdir -p $(BUILD_DIR)
	@echo "[build] colcon build --symlink-install ($(ROS_DISTRO): $(BUILD_DIR)/, $(INSTALL_DIR)/)"
	source "$(VENV_ABS)/bin/activate"; \
	export AMENT_PREFIX_PATH="$(VENV_ABS)" CMAKE_PREFIX_PATH="$(VENV_ABS)"; \
	flock $(BUILD_DIR)/.dofa-build.lock \
	colcon --log-base $(LOG_DIR) --log-level error build --symlink-install --paths . \
		--build-base $(BUILD_DIR) --install-base $(INSTALL_DIR) \
		--cmake-args -DPython3_EXECUTABLE="$(VENV_ABS)/bin/python" -DBUILD_TESTING=OFF \
		-DCMAKE_BUILD_TYPE=Release
	@# symlinks to files deleted from the source tree (colcon never removes them)
	find $(INSTALL_DIR) -xtype l -delete
	touch "$@"

# ---------------------------------------------------------------------------------------------
# All four checks run; the target fails if any failed.
lint: $(VENV_STAMP)
	@rc=0; \
	for cmd in "ruff check ." "ruff format --check ." "mypy" "python scripts/check_package.py"; do \
		echo "[lint] $$cmd"; "$(VENV_ABS)/bin/"$$cmd || rc=1; \
	done; \
	exit $$rc

check-package: $(VENV_STAMP)
	$(VENV)/bin/python scripts/check_package.py

# pytest exit code 5 = "no tests collected": a failure here, never a silent pass.
pytest: build
	@rc=0; ROS_DOMAIN_ID=$(ROS_DOMAIN_ID) $(ROS_ENV) pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (exit code 5)" >&2; exit 1; fi; \
	exit $$rc

# The ROS-facing tests only (ROS_TESTS), on this ROS_DISTRO's venv and build.
test-ros: build
	@$(MAKE) --no-print-directory pytest PYTEST_ARGS="$(ROS_TESTS) $(PYTEST_ARGS)"

# Lint first, then the whole suite even when lint failed (so both results are seen).
test: build
	@lint_rc=0; test_rc=0; \
	$(MAKE) --no-print-directory lint || lint_rc=$$?; \
	$(MAKE) --no-print-directory pytest || test_rc=$$?; \
	if [ $$lint_rc -ne 0 ]; then echo "ERROR: lint failed (see [lint] above)" >&2; fi; \
	if [ $$test_rc -ne 0 ]; then echo "ERROR: tests failed" >&2; fi; \
	[ $$lint_rc -eq 0 ] && [ $$test_rc -eq 0 ]

demo: build
	$(ROS_ENV) $(INSTALL_DIR)/dynamic_ofa_ros/lib/dynamic_ofa_ros/demo $(DEMO_ARGS)

bench: build
	$(ROS_ENV) dofa-bench --device cpu $(BENCH_ARGS)
	$(ROS_ENV) python -m dynamic_ofa_ros.ros_tools.node_bench --device cpu $(NODE_BENCH_ARGS)

# Not in CI: minutes of hostile input against the installed node (issue 15), JSON with rates,
# service latencies and RSS over time.
SOAK_ARGS ?=
soak: build
	$(ROS_ENV) python -m dynamic_ofa_ros.ros_tools.soak --out docs/results/soak-cpu.json $(SOAK_ARGS)

# An interactive shell in the ROS environment (venv + install/setup.bash).
shell: build
	$(ROS_ENV) bash

# Both distros' build trees, and the side workspace of ../shared/ros-deps (scripts/build-ros-deps).
clean:
	rm -rf build install log build-jazzy install-jazzy log-jazzy build-deps* install-deps*

distclean: clean
	rm -rf "$(VENV)" .venv-jazzy .mypy_cache .ruff_cache .pytest_cache
