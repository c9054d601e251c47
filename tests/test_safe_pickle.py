"""The RHD annotation pickles are read with a restricted unpickler (layers/hand/rhd/release.py SafeUnpickler,
issue 14 item 4): what the real and the synthetic releases need reads (numpy arrays from Python 3 pickles of
every protocol, numpy 1 and 2 module names, Python 2 pickles); anything else is refused with one line naming
the file and the global, and runs nothing (the payloads below would create a file; it must not exist)."""

import io
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from layers.hand.rhd import convert, release
from netdef.errors import NetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _annotations(seed=0, n=2):
    rng = np.random.default_rng(seed)
    return {i: {"xyz": rng.uniform(-0.1, 0.1, (42, 3)) + [0, 0, 0.5],
                "uv_vis": np.column_stack([rng.uniform(0, 320, (42, 2)), rng.integers(0, 2, 42)]),
                "K": np.array([[283.1, 0, 160.0], [0, 283.1, 160.0], [0, 0, 1]])} for i in range(n)}


# ---- a Python 2 pickle, written opcode by opcode as Python 2's cPickle (protocol 2) writes numpy arrays -------

def _py2_str(b: bytes) -> bytes:            # a Python 2 str: SHORT_BINSTRING / BINSTRING
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _py2_int(v: int) -> bytes:
    return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)


def _py2_array(a) -> bytes:
    a = np.ascontiguousarray(a, dtype="<f8")
    out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
    out += b"\x87R(" + _py2_int(1) + b"(" + b"".join(_py2_int(d) for d in a.shape) + b"t"
    out += b"cnumpy\ndtype\n" + _py2_str(b"f8") + _py2_int(0) + _py2_int(1) + b"\x87R("
    out += _py2_int(3) + _py2_str(b"<") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
    return out + b"\x89" + _py2_str(a.tobytes()) + b"tb"


def _py2_pickle(anno) -> bytes:
    out = b"\x80\x02}("
    for image_id, a in anno.items():
        out += _py2_int(image_id) + b"}(" + b"".join(_py2_str(k.encode()) + _py2_array(v) for k, v in a.items()) + b"u"
    return out + b"u."


def _same(got, want):
    assert sorted(got) == sorted(want)
    for i in want:
        assert sorted(got[i]) == sorted(want[i])
        for key in want[i]:
            assert np.array_equal(got[i][key], want[i][key]) and got[i][key].dtype == np.asarray(want[i][key]).dtype


# ---- what must read --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_python3_pickles_of_every_protocol_read(tmp_path, protocol):
    anno = _annotations()
    anno[1]["xyz"] = anno[1]["xyz"].astype(np.float32)            # the real release's float32 arrays
    anno[1]["K"] = np.asfortranarray(anno[1]["K"])
    path = tmp_path / "anno_training.pickle"
    path.write_bytes(pickle.dumps(anno, protocol=protocol))
    _same(release.read_annotations(str(path)), anno)


def test_numpy1_module_names_and_numpy_scalars_read():
    anno = {0: {"xyz": np.ones((42, 3), np.float32), "scale": np.float32(1.5)}}
    data = pickle.dumps(anno, protocol=2)
    assert b"numpy._core.multiarray" in data                                 # numpy 2 here
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as numpy 1 wrote it
    for blob in (data, old):
        got = release.safe_load(io.BytesIO(blob))
        assert got[0]["scale"] == np.float32(1.5) and np.array_equal(got[0]["xyz"], anno[0]["xyz"])


def test_python2_pickle_reads_with_latin1(tmp_path):
    anno = _annotations(seed=3)
    data = _py2_pickle(anno)
    with pytest.raises(UnicodeDecodeError):          # the plain default reader fails on it: latin1 is needed
        pickle.loads(data)
    path = tmp_path / "anno_evaluation.pickle"
    path.write_bytes(data)
    got = release.read_annotations(str(path))
    _same(got, anno)
    assert all(type(k) is str for k in got[0])


def test_synthetic_release_pickles_read(tmp_path):
    from layers.hand.rhd import synthetic
    base = synthetic.make_tiny_release(str(tmp_path))
    for split in ("training", "evaluation"):
        path = release.annotation_path(base, split)
        with open(path, "rb") as f:
            plain = pickle.load(f)
        _same(release.read_annotations(path), plain)


# ---- what must be refused --------------------------------------------------------------------------------------

class _System:
    """Unpickling calls os.system(command): the classic payload."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def _payloads(marker):
    command = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        f"{os.system.__module__}.system": pickle.dumps({0: _System(command)}),
        "builtins.eval": pickle.dumps({0: {"xyz": _Eval(code)}}),
        "__builtin__.eval": pickle.dumps({0: {"xyz": _Eval(code)}}, protocol=2),     # Python 2's name for it
        "subprocess.call": b"csubprocess\ncall\n((Vtouch\nV" + str(marker).encode() + b"\nltR.",   # hand-written, protocol 0
    }


def test_the_payloads_are_live(tmp_path):
    """Plain pickle.load runs each of them (so the refusal tests below can fail)."""
    for name in _payloads(tmp_path / "x"):
        marker = tmp_path / f"plain_{name}"
        data = _payloads(marker)[name]
        subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                       input=data, check=False, capture_output=True)
        assert marker.exists(), name


@pytest.mark.parametrize("name", [f"{os.system.__module__}.system", "builtins.eval", "__builtin__.eval",
                                  "subprocess.call"])
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, name):
    marker = tmp_path / "pwned"
    payloads = _payloads(marker)
    path = tmp_path / "anno_training.pickle"
    path.write_bytes(payloads[name])
    with pytest.raises(NetError) as e:
        release.read_annotations(str(path))
    message = str(e.value)
    assert "\n" not in message and str(path) in message and f"'{name}'" in message
    assert message.startswith("refused annotation file")
    assert not marker.exists()


def test_prepare_rhd_refuses_a_crafted_release_with_one_line_exit_2(tmp_path):
    """The whole tool: a release whose evaluation pickle is a payload stops with one line and exit 2; the
    payload's file is never created."""
    from layers.hand.rhd import synthetic
    base = synthetic.make_tiny_release(str(tmp_path))
    marker = tmp_path / "pwned"
    path = release.annotation_path(base, "evaluation")
    with open(path, "wb") as f:
        f.write(pickle.dumps({0: _System(f"touch {marker}")}))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prepare_rhd.py"), "--rhd-root", base,
                           "--out", str(tmp_path / "out"), "--workers", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refused annotation file")
    assert path in lines[0] and f"'{os.system.__module__}.system'" in lines[0]
    assert not marker.exists()
    with pytest.raises(NetError, match="refused annotation file"):
        convert.load_annotations(base, "evaluation")
    assert not marker.exists()
