"""LICENSE and CITATION.cff: the licence is named, and the citation file cites the replication and the
MEGL paper (arXiv 2411.13053) with the keys Citation File Format 1.2.0 requires."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_license_and_citation_agree():
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    for key in ("cff-version", "message", "title", "authors"):  # required by CFF 1.2.0
        assert cff.get(key), key
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    paper = cff["references"][0]
    assert paper["title"] == "MEGL: Multimodal Explanation-Guided Learning"
    assert [a["family-names"] for a in paper["authors"]] == ["Zhang", "Jiang", "Pan", "Wang", "Bai", "Zhao"]
    assert "2411.13053" in paper["url"]
