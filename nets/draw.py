"""Draw a net as a graph, like Caffe's python/caffe/draw.py and python/draw_net.py (no pydot needed).

    net_to_dot("net.prototxt", rankdir="LR", phase="ALL") -> DOT text for Graphviz
    python tools/draw_net.py NET.prototxt OUT.png [--rankdir LR|TB|BT|RL] [--phase TRAIN|TEST|ALL] [--stage S]

Caffe's look: each layer is a filled box (record) labelled with its name and (type); Convolution,
Deconvolution and Pooling add kernel size, stride and pad, Pooling its method. Colours: convolutions red,
pooling orange, inner products purple, other layers blue, in-place layers (one bottom that is also the top)
green. Blobs are grey octagons; edges run bottom blob -> layer -> top blob, so an in-place layer makes a loop
on its blob. Edges out of Convolution, Deconvolution and InnerProduct carry num_output, out of Data
"Batch <batch_size>". Labels read across (`TB`, `BT`) or stacked (`LR`, `RL`), as in Caffe.

Differences from Caffe: --phase TRAIN/TEST keeps the layers a Net of that phase builds (stage and level
rules too, with --stage), where Caffe's draw looks at the rules' phase only; every blob is an octagon (Caffe
leaves blobs no layer reads unstyled); layers of one name (e.g. a TRAIN and a TEST data layer, with ALL)
stay separate boxes; net-level `input:` blobs appear as Input layers (the net is upgraded as Net reads it).
The image is made by Graphviz's `dot` program; OUT.dot writes the DOT text alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess

from netdef.errors import NetError, add_debug_flag, run_tool
from netdef.spec import LayerDef, net_def
from netdef.text_format import Message, parse, parse_file

__all__ = ["net_to_dot", "draw_net_to_file", "main", "RANKDIRS", "FORMATS"]

RANKDIRS = ("LR", "TB", "BT", "RL")
PHASES = ("TRAIN", "TEST", "ALL")
FORMATS = ("png", "svg", "pdf", "dot")

LAYER_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
LAYER_COLOUR = "#6495ED"
IN_PLACE_COLOUR = "#90EE90"
BLOB_COLOUR = "#E0E0E0"


def _load(definition) -> Message:
    """A NetSpec (anything with to_proto()), a parsed Message, prototxt text, or a path."""
    if hasattr(definition, "to_proto"):
        return definition.to_proto()
    if isinstance(definition, Message):
        return definition
    if isinstance(definition, str) and ("{" in definition or "\n" in definition):
        return parse(definition, "<string>")
    return parse_file(definition)


def _without_rules(msg: Message) -> Message:
    """The net with every layer's include/exclude rules dropped (phase ALL draws every layer)."""
    out = Message([], msg.loc)
    for f in msg:
        if f.name in ("layer", "layers") and isinstance(f.value, Message):
            layer = Message([g for g in f.value if g.name not in ("include", "exclude")], f.value.loc)
            out.add(f.name, layer, f.loc)
        else:
            out.fields.append(f)
    return out


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _esc_record(text: str) -> str:
    """Text inside a record label, where { } | < > are field syntax."""
    out = _esc(text)
    for c in "{}|<>":
        out = out.replace(c, "\\" + c)
    return out


def _values(block: Message | None, name: str) -> list:
    return block.values(name) if block is not None else []


def _last(block: Message | None, name: str, default):
    vals = _values(block, name)
    return vals[-1] if vals else default


# Spatial params as Caffe names them: (label, field, height field, width field, default).
_SPATIAL = (("kernel size", "kernel_size", "kernel_h", "kernel_w", 1),
            ("stride", "stride", "stride_h", "stride_w", 1),
            ("pad", "pad", "pad_h", "pad_w", 0))


def _spatial(block: Message | None, field: str, h: str, w: str, default, repeated: bool) -> str:
    """'5', or '3x5' when the dims differ; the _h/_w fields win when given, as in Caffe."""
    if _values(block, h) or _values(block, w):
        dims = [_last(block, h, 0), _last(block, w, 0)]
    elif repeated:   # ConvolutionParameter's kernel_size, stride, pad: one value, or one per spatial dim
        dims = _values(block, field) or [default]
    else:
        dims = [_last(block, field, default)]
    return str(dims[0]) if len(set(map(str, dims))) == 1 else "x".join(map(str, dims))


def _layer_label(ls: LayerDef, sep: str) -> str:
    """name, (type), and for Convolution / Deconvolution / Pooling the kernel size, stride and pad."""
    parts = [ls.name]
    conv = ls.type in ("Convolution", "Deconvolution")
    if ls.type == "Pooling":
        block = ls.blocks.get("pooling_param")
        parts.append(f"({ls.type} {_last(block, 'pool', 'MAX')})")
    else:
        block = ls.blocks.get("convolution_param") if conv else None
        parts.append(f"({ls.type})")
    if ls.type == "Pooling" and str(_last(block, "global_pooling", "false")) in ("true", "True", "t", "1"):
        parts.append("global pooling")
    elif conv or ls.type == "Pooling":
        parts += [f"{what}: {_spatial(block, f, h, w, d, conv)}" for what, f, h, w, d in _SPATIAL]
    return sep.join(_esc_record(p) for p in parts)


def _edge_label(ls: LayerDef) -> str | None:
    if ls.type in ("Convolution", "Deconvolution"):
        n = _last(ls.blocks.get("convolution_param"), "num_output", None)
    elif ls.type == "InnerProduct":
        n = _last(ls.blocks.get("inner_product_param"), "num_output", None)
    elif ls.type == "Data":
        n = _last(ls.blocks.get("data_param"), "batch_size", None)
        return None if n is None else f"Batch {n}"
    else:
        return None
    return None if n is None else str(n)


def _attrs(**kv) -> str:
    return ", ".join(f'{k}="{v}"' for k, v in kv.items())


def net_to_dot(definition, rankdir: str = "LR", phase: str = "ALL", stages=()) -> str:
    """DOT text of the net. `definition`: a nets.netspec.NetSpec, a parsed Message, prototxt text or a path.
    `phase`: TRAIN or TEST (the layers a Net of that phase builds, with `stages`), or ALL (every layer)."""
    if rankdir not in RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(RANKDIRS)}, got {rankdir!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    msg = _load(definition)
    if phase == "ALL":
        spec = net_def(_without_rules(msg), "TRAIN", stages)
    else:
        spec = net_def(msg, phase, stages)
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    nodes: list[str] = []
    edges: list[str] = []
    blobs: set[str] = set()
    layer_ids: set[str] = set()

    def blob(name: str) -> str:
        node = f'"blob:{_esc(name)}"'
        if name not in blobs:
            blobs.add(name)
            style = _attrs(label=_esc(name), shape="octagon", style="filled", fillcolor=BLOB_COLOUR)
            nodes.append(f"  {node} [{style}];")
        return node

    for ls in spec.layers:
        key, k = ls.name, 1
        while key in layer_ids:   # layers may share a name (one per phase); each gets its own box
            k += 1
            key = f"{ls.name}#{k}"
        layer_ids.add(key)
        node = f'"layer:{_esc(key)}"'
        in_place = len(ls.bottoms) == 1 and ls.tops == ls.bottoms
        colour = IN_PLACE_COLOUR if in_place else LAYER_COLOURS.get(ls.type, LAYER_COLOUR)
        bottoms = [blob(b) for b in ls.bottoms]
        style = _attrs(label=_layer_label(ls, sep), shape="record", style="filled", fillcolor=colour)
        nodes.append(f"  {node} [{style}];")
        edges.extend(f"  {b} -> {node};" for b in bottoms)
        label = _edge_label(ls)
        attrs = f" [{_attrs(label=_esc(label))}]" if label is not None else ""
        edges.extend(f"  {node} -> {blob(t)}{attrs};" for t in ls.tops)
    name = spec.name or "Net"
    return f'digraph "{_esc(name)}" {{\n  rankdir={rankdir};\n' + "\n".join(nodes + edges) + "\n}\n"


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise NetError(f"cannot tell the image format of '{path}' from its extension "
                       f"(use {', '.join('.' + f for f in FORMATS)})")
    return ext


def _write_text(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as e:
        raise NetError(f"cannot write '{path}': {e.strerror or e}") from None


def draw_net_to_file(definition, path: str, rankdir: str = "LR", phase: str = "ALL", stages=()) -> None:
    """Write the net's drawing to `path` in the format its extension names (png, svg, pdf; dot = DOT text).
    NetError if the net cannot be read, `dot` fails, or `dot` is missing (then the DOT text is written to
    the path with a .dot extension and the message says so)."""
    fmt = _format(path)
    text = net_to_dot(definition, rankdir, phase, stages)
    if fmt == "dot":
        _write_text(path, text)
        return
    exe = shutil.which("dot")
    if exe is None:
        dot_path = os.path.splitext(path)[0] + ".dot"
        _write_text(dot_path, text)
        raise NetError(f"the Graphviz program 'dot' is not installed (apt-get install graphviz); "
                       f"the DOT text was written to {dot_path}")
    proc = subprocess.run([exe, f"-T{fmt}", "-o", path], input=text.encode("utf-8"), capture_output=True)
    if proc.returncode != 0:
        why = " ".join(proc.stderr.decode("utf-8", "replace").split()) or f"exit status {proc.returncode}"
        raise NetError(f"dot could not draw '{path}': {why}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="draw_net.py", description="Draw a graph of the net architecture.")
    ap.add_argument("net", help="net definition (.prototxt)")
    ap.add_argument("out", help="image to write: .png, .svg or .pdf (drawn by Graphviz's dot), or .dot (DOT text)")
    ap.add_argument("--rankdir", choices=RANKDIRS, default="LR",
                    help="graph direction: LR (left to right, default), TB (top to bottom), BT, RL")
    ap.add_argument("--phase", choices=PHASES, default="ALL",
                    help="draw the layers of the TRAIN or TEST net, or ALL layers (default)")
    ap.add_argument("--stage", action="append", default=[], metavar="S",
                    help="net stage for include/exclude rules (repeatable, or comma-separated)")
    add_debug_flag(ap)
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    stages = [s for arg in args.stage for s in arg.split(",") if s]

    def draw() -> int:
        draw_net_to_file(args.net, args.out, args.rankdir, args.phase, stages)
        print(f"Drawing net to {args.out}")
        return 0
    return run_tool(draw, args.debug)
