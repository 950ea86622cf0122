# dynamic_ofa_ros: bootstrap, build, test, demo on a machine without ROS.
#
#   make demo     set up .venv + colcon build (idempotent), then run the demo
#   make test     set up + build, lint, package check, full pytest suite against the install space
#
# Other targets: venv build lint check-package pytest bench soak shell clean distclean help.
# Variables: VENV (default .venv), PYTHON (python3.11), PYTEST_ARGS, DEMO_ARGS, BENCH_ARGS,
# NODE_BENCH_ARGS, SOAK_ARGS.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV ?= .venv
PYTHON ?= python3.11
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=
NODE_BENCH_ARGS ?=

VENV_ABS := $(abspath $(VENV))
VENV_STAMP := $(VENV)/.dofa-venv.stamp
BUILD_STAMP := install/.dofa-build.stamp
ROS_ENV := VENV=$(VENV_ABS) scripts/ros-env
# Random start for this run's ROS domain; test/conftest.py locks a free one from there on.
ROS_DOMAIN_ID ?= $(shell echo $$(( RANDOM % 100 + 1 )))

# A rebuild is needed when the interfaces or CMake/package files change, or when files are
# added to / removed from an installed directory (--symlink-install links files one by one;
# edits to existing files are live without rebuilding). Directory mtimes track the latter.
BUILD_INPUTS := Makefile package.xml CMakeLists.txt scripts/entry_point.in \
	$(wildcard msg/*.msg srv/*.srv) \
	$(shell find dynamic_ofa_ros offline_tools launch config -type d -not -name __pycache__ 2>/dev/null)

.PHONY: help venv setup build lint check-package pytest test demo bench soak shell clean distclean

help:
	@sed -n '2,9p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------------------------------------
venv setup: $(VENV_STAMP)

$(VENV_STAMP): requirements.txt requirements-dev.txt scripts/bootstrap.sh scripts/patch_ros_cmake.py
	scripts/bootstrap.sh "$(VENV)" "$(PYTHON)"
	touch "$@"

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(VENV_STAMP) $(BUILD_INPUTS)
	@mkdir -p build
	@echo "[build] colcon build --symlink-install"
	source "$(VENV_ABS)/bin/activate"; \
	export AMENT_PREFIX_PATH="$(VENV_ABS)" CMAKE_PREFIX_PATH="$(VENV_ABS)"; \
	flock build/.dofa-build.lock \
	colcon --log-level error build --symlink-install --paths . \
		--cmake-args -DPython3_EXECUTABLE="$(VENV_ABS)/bin/python" -DBUILD_TESTING=OFF \
		-DCMAKE_BUILD_TYPE=Release
	@# symlinks to files deleted from the source tree (colcon never removes them)
	find install -xtype l -delete
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

# Lint first, then the whole suite even when lint failed (so both results are seen).
test: build
	@lint_rc=0; test_rc=0; \
	$(MAKE) --no-print-directory lint || lint_rc=$$?; \
	$(MAKE) --no-print-directory pytest || test_rc=$$?; \
	if [ $$lint_rc -ne 0 ]; then echo "ERROR: lint failed (see [lint] above)" >&2; fi; \
	if [ $$test_rc -ne 0 ]; then echo "ERROR: tests failed" >&2; fi; \
	[ $$lint_rc -eq 0 ] && [ $$test_rc -eq 0 ]

demo: build
	$(ROS_ENV) install/dynamic_ofa_ros/lib/dynamic_ofa_ros/demo $(DEMO_ARGS)

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

clean:
	rm -rf build install log

distclean: clean
	rm -rf "$(VENV)" .mypy_cache .ruff_cache .pytest_cache
