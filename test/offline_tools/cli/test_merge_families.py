"""``dofa-levels calibrate --family A B``: the architectures of several families, calibrated together."""

from __future__ import annotations

import json
from pathlib import Path

from offline_tools.cli.levels import merge_families

CONFIG = Path(__file__).resolve().parents[3] / "config" / "levels"


def _family(path: Path, tmp: Path, name: str, keep: slice) -> str:
    """A family file holding some of a shipped table's architectures (no BN file)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["levels"] = data["levels"][keep]
    for i, level in enumerate(data["levels"], start=1):
        level["level"] = i
    data["bn_file"] = None
    data.pop("bn_sha256", None)
    out = tmp / name
    out.write_text(json.dumps(data), encoding="utf-8")
    return str(out)


def test_union_without_duplicates_header_from_the_first(tmp_path: Path) -> None:
    first = _family(CONFIG / "cpu-torch.json", tmp_path, "a.json", slice(0, 4))
    second = _family(CONFIG / "cpu-torch.json", tmp_path, "b.json", slice(2, 7))
    header = json.loads(Path(first).read_text(encoding="utf-8"))
    header["profiling"]["note"] = "the first family's"
    Path(first).write_text(json.dumps(header), encoding="utf-8")
    merged = merge_families([first, second])
    keys = [level.config.key() for level in merged.levels]
    assert len(keys) == len(set(keys)) == 7  # levels 3-4 are in both
    assert [level.level for level in merged.levels] == list(range(1, 8))
    assert merged.profiling == header["profiling"]
    assert merged.bn is None
    assert merged.extra["merged_from"] == [
        {"family": first, "architectures": 4, "added": 4},
        {"family": second, "architectures": 5, "added": 3},
    ]


def test_one_family_is_read_as_is(tmp_path: Path) -> None:
    only = _family(CONFIG / "cpu-torch.json", tmp_path, "a.json", slice(0, 3))
    family = merge_families([only])
    assert len(family.levels) == 3 and "merged_from" not in family.extra
