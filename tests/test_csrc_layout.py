"""The compiled path's C++ is one translation unit split into headers: every header is part of
what a build is stamped with (an edited header must rebuild, not load the old library), and
recurrent.cpp includes each of them."""
import re

from seqlab.kernels import compiled

CSRC = compiled.SOURCES[0].parent


def test_every_header_is_in_the_build_stamp(tmp_path, monkeypatch):
    headers = sorted(CSRC.glob("*.h"))
    assert headers and list(compiled.HEADERS) == headers
    copies = []
    for h in headers:
        copy = tmp_path / h.name
        copy.write_bytes(h.read_bytes())
        copies.append(copy)
    monkeypatch.setattr(compiled, "HEADERS", tuple(copies))
    before = compiled._stamp()
    copies[-1].write_text(copies[-1].read_text() + "\n// edited\n")
    assert compiled._stamp() != before


def test_recurrent_cpp_includes_every_header():
    cpp = (CSRC / "recurrent.cpp").read_text()
    included = set(re.findall(r'#include "([^"]+)"', cpp))
    assert included == {h.name for h in CSRC.glob("*.h")}
    for h in CSRC.glob("*.h"):
        assert h.name in cpp.split("#include")[0], f"the map at the top of recurrent.cpp does not name {h.name}"


def test_cell_ids_match_the_cpp_enum():
    """The cell ids are written twice, once per language: common.CELL_ID (Python, which the compiled
    and Triton paths pass) and csrc/common.h's ``enum Cell``; they must agree."""
    from seqlab.kernels.common import CELL_ID

    enum = re.search(r"enum Cell[^{]*\{([^}]*)\}", (CSRC / "common.h").read_text()).group(1)
    cpp = {name.strip().lower(): int(value) for name, value in re.findall(r"(\w+)\s*=\s*(\d+)", enum)}
    assert cpp == CELL_ID
