"""Write nets in Python and get prototxt, like Caffe's python/caffe/net_spec.py (no protobuf needed).

    from nets.netspec import NetSpec, layers as L, params as P

    n = NetSpec(name="LeNet")
    n.data, n.label = L.DummyData(shape=[dict(dim=[64, 1, 28, 28]), dict(dim=[64])], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label)
    text = str(n.to_proto())                   # or n.to_prototxt(header=generated_by())

As in Caffe:
- `L.<Type>(*bottoms, **kwargs)` is one layer; it returns its Top, a tuple of Tops (`ntop=2`), or the layer
  itself (`ntop=0`). `in_place=True` makes the tops the bottoms' blobs.
- Assigning to a NetSpec attribute names the top, and a layer is named after its first top. Tops nobody
  named get `<Type><count>` names (`Convolution1`). `to_proto()` emits every layer the assigned tops need,
  inputs first, in assignment order.
- Keyword args: `ntop`, `in_place`; layer fields (name, loss_weight, param, include, exclude, phase,
  propagate_down) go at layer level; `xxx_param=dict(...)` is that block; any other kwarg goes into the param
  block of the layer that declares a field of that name. Lists are repeated fields, dicts nested messages,
  bools true/false, str quoted strings, `P.<Anything>.<NAME>` a bare enum name.

Differences from Caffe's net_spec:
- Kwargs are routed by the layer class's declared param blocks (layers.registry), not by a table from
  caffe.proto, and checked when the layer is created: an unknown kwarg, block or nested field, a value of
  the wrong kind or an enum name the field does not have is a NetError naming the layer type and the kwarg
  (with "did you mean"). A kwarg that is a field of two of the layer's blocks must be given in its block.
  Types not registered here only take layer fields and explicit `xxx_param=dict(...)` blocks (passed through
  unchecked). Enum fields also take the name as a string (`pool="MAX"`) or its number.
- `to_proto()` returns a netdef.text_format.Message (str() of it is the prototxt), not a caffe_pb2.NetParameter.
  Layer fields are written in caffe.proto's order and param blocks in the order the layer declares them,
  but fields inside a block in the order you gave them (protobuf sorts those by field number). Floats print
  as Python's repr (`lr_mult: 1.0`). `P.Pooling.MAX` is the name MAX (an Ident), not the number 0.
- Bottoms may also be blob names (str), for blobs this NetSpec does not make. `bottom=` and `top=` kwargs are
  errors (Caffe appends them to the layer's lists). Assigning a tuple of tops to one attribute ("bundles")
  and `Top.name` are not supported.
- `NetSpec(name=...)` / `to_proto(name=...)` set the net's name; `to_prototxt(header=...)` writes the text
  with a `# ...` header (see `generated_by()`).

Over 400 lines as one cohesive thing: a port of one Caffe module (net_spec.py) and its value checks.
"""

from __future__ import annotations

import numbers
import shlex
import sys
from collections import Counter

from netdef.params import Param, Params
from netdef.errors import NetError
from netdef.params import did_you_mean
from netdef.spec import PHASES
from netdef.text_format import Ident, Message, write

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto", "generated_by", "ProtoMessage"]


class ProtoMessage(Message):
    """A Message whose str() is its prototxt text (what Caffe's `str(net_param)` gives)."""

    def __str__(self) -> str:
        return write(self)


# LayerParameter's own fields (LAYER_FIELDS in caffe.proto's field-number order: the order they are written in).
_RULE = Params("rule", phase=Param(PHASES), min_level=Param(int), max_level=Param(int),
               stage=Param(str, repeated=True), not_stage=Param(str, repeated=True))
_PARAM_SPEC = Params("param", name=Param(str), share_mode=Param(("STRICT", "PERMISSIVE")), lr_mult=Param(float),
                     decay_mult=Param(float))
LAYER_FIELDS = {
    "name": Param(str), "loss_weight": Param(float, repeated=True), "param": Param(_PARAM_SPEC, repeated=True),
    "include": Param(_RULE, repeated=True), "exclude": Param(_RULE, repeated=True), "phase": Param(PHASES),
    "propagate_down": Param(bool, repeated=True),
}
# `type: "Python"` layers are not in the registry (Net loads their class from python_param).
PYTHON_BLOCKS = {"python_param": {"module": Param(str), "layer": Param(str), "param_str": Param(str),
                                  "share_in_parallel": Param(bool)}}
_NOT_KWARGS = {
    "bottom": "pass bottoms as positional arguments (Tops or blob names)",
    "top": "name tops by assigning them to a NetSpec attribute (n.name = L.Type(...))",
    "type": "the type is the function's name (L.Type)",
}


def _declared_blocks(type_name: str) -> dict[str, dict[str, Param]] | None:
    """The param blocks a registered layer type reads, or None when the type is not registered."""
    if type_name == "Python":
        return PYTHON_BLOCKS
    from layers.registry import get_layer_class
    try:
        cls = get_layer_class(type_name)
    except NetError:
        return None
    return cls.params.blocks


# ---- values -> text-format values ---------------------------------------------------------------------------

def _kind_name(kind) -> str:
    if isinstance(kind, tuple):
        return "one of " + ", ".join(kind)
    return {int: "an integer", float: "a number", bool: "True or False", str: "a string"}.get(kind, "a dict")


def _values(value, decl: Param | None, where: str, path: str) -> list:
    """The text-format values of one field: a list, since lists become repeated fields."""
    if isinstance(value, (list, tuple)):
        if decl is not None and not decl.repeated:
            raise NetError(f"{where}: {path} takes one value, got a {type(value).__name__}")
        return [_value(v, decl, where, path) for v in value]
    return [_value(value, decl, where, path)]


def _value(v, decl: Param | None, where: str, path: str):
    kind = decl.kind if decl is not None else None
    if isinstance(kind, Params) or (kind is None and isinstance(v, dict)):
        if not isinstance(v, dict):
            raise NetError(f"{where}: {path} expects a dict (a {{ }} block), got {v!r}")
        return _message(v, kind.fields() if kind is not None else None, where, path)
    if isinstance(v, (dict, list, tuple)):
        raise NetError(f"{where}: {path} expects {_kind_name(kind)}, got {v!r}")
    if isinstance(kind, tuple):
        if isinstance(v, str) and v in kind:
            return Ident(v)
        if isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v < len(kind):
            return Ident(kind[int(v)])
        raise NetError(f"{where}: {path} expects {_kind_name(kind)}, got {v!r}{did_you_mean(str(v), kind)}")
    if isinstance(v, bool):
        if kind not in (None, bool):
            raise NetError(f"{where}: {path} expects {_kind_name(kind)}, got {v!r}")
        return Ident("true" if v else "false")
    if kind is bool:
        raise NetError(f"{where}: {path} expects True or False, got {v!r}")
    if isinstance(v, str):
        if kind not in (None, str) or (kind is str and isinstance(v, Ident)):
            raise NetError(f"{where}: {path} expects {_kind_name(kind)}, got {v!r}")
        return v
    if kind is str:
        raise NetError(f"{where}: {path} expects a string, got {v!r}")
    if isinstance(v, numbers.Integral):
        return float(v) if kind is float else int(v)
    if isinstance(v, numbers.Real):
        if kind is int:
            raise NetError(f"{where}: {path} expects an integer, got {v!r}")
        return float(v)
    if kind is not None:
        raise NetError(f"{where}: {path} expects {_kind_name(kind)}, got {v!r}")
    raise NetError(f"{where}: {path} cannot be written to prototxt: {v!r} ({type(v).__name__})")


def _message(d: dict, fields: dict[str, Param] | None, where: str, path: str) -> ProtoMessage:
    msg = ProtoMessage()
    for k, v in d.items():
        if not isinstance(k, str) or not (k.isidentifier() and k.isascii()):
            raise NetError(f"{where}: {path} has a key that is not a field name: {k!r}")
        decl = None
        if fields is not None:
            decl = fields.get(k)
            if decl is None:
                raise NetError(f"{where}: unknown field '{k}' in {path}{did_you_mean(k, fields)}")
        for x in _values(v, decl, where, f"{path}.{k}"):
            msg.add(k, x)
    return msg


# ---- layers ---------------------------------------------------------------------------------------------------

class Top:
    """One output blob of a layer (`fn`), the n-th of its tops."""

    def __init__(self, fn: "Function", n: int):
        self.fn, self.n = fn, n

    def to_proto(self, name: str | None = None) -> ProtoMessage:
        """A net with every layer this top needs (blob names generated)."""
        return to_proto(self, name=name)

    def __repr__(self) -> str:
        return f"<Top {self.n} of L.{self.fn.type_name}>"


class Function:
    """One layer: its type, its inputs (Tops or blob names) and its checked params."""

    def __init__(self, type_name: str, inputs: tuple, kwargs: dict):
        self.type_name = type_name
        self.where = f"L.{type_name}"
        for i, inp in enumerate(inputs):
            if not isinstance(inp, (Top, str)):
                hint = " (a layer with ntop=0 has no top)" if isinstance(inp, Function) else ""
                hint = hint or (" (unpack the tops: a, b = L.Type(..., ntop=2))" if isinstance(inp, tuple) else "")
                raise NetError(f"{self.where}: bottom {i} must be a Top or a blob name, got {inp!r}{hint}")
        self.inputs = inputs
        kwargs = dict(kwargs)
        self.ntop = kwargs.pop("ntop", 1)
        self.in_place = kwargs.pop("in_place", False)
        if not isinstance(self.ntop, int) or isinstance(self.ntop, bool) or self.ntop < 0:
            raise NetError(f"{self.where}: ntop must be an integer >= 0, got {self.ntop!r}")
        if not isinstance(self.in_place, bool):
            raise NetError(f"{self.where}: in_place must be True or False, got {self.in_place!r}")
        if self.in_place and self.ntop != len(inputs):
            raise NetError(f"{self.where}: in_place=True needs as many bottoms as tops "
                           f"({len(inputs)} bottom(s), ntop={self.ntop})")
        self.blocks = _declared_blocks(type_name)
        self.params: dict = {}
        self._update(kwargs)
        self.tops = tuple(Top(self, i) for i in range(self.ntop))

    def _update(self, kwargs: dict) -> None:
        """Add kwargs (Caffe's NetSpec.update), checking the result."""
        merged = {**self.params, **kwargs}
        self.layer_fields, self.block_fields = self._route(merged)
        self.params = merged

    def _route(self, kwargs: dict) -> tuple[dict, dict]:
        """kwargs -> ({layer field: values}, {block: {field: values}})."""
        where = self.where
        layer: dict[str, list] = {}
        blocks: dict[str, dict[str, list]] = {}
        known = self.blocks
        for k, v in kwargs.items():
            if k in _NOT_KWARGS:
                raise NetError(f"{where}: no '{k}=' keyword: {_NOT_KWARGS[k]}")
            if k in LAYER_FIELDS:
                layer[k] = _values(v, LAYER_FIELDS[k], where, k)
            elif k.endswith("_param"):
                if known is not None and k not in known:
                    takes = f"its blocks: {', '.join(known)}" if known else "it takes no param block"
                    raise NetError(f"{where}: {self.type_name} has no {k} ({takes}){did_you_mean(k, known)}")
                if not isinstance(v, dict):
                    raise NetError(f"{where}: {k} expects a dict, got {v!r}")
                fields = known[k] if known is not None else None
                block = blocks.setdefault(k, {})
                for name, value in v.items():
                    decl = None
                    if fields is not None:
                        decl = fields.get(name)
                        if decl is None:
                            raise NetError(f"{where}: unknown field '{name}' in {k}{did_you_mean(name, fields)}")
                    if name in block:
                        raise NetError(f"{where}: '{name}' given twice for {k}")
                    block[name] = _values(value, decl, where, f"{k}.{name}")
            else:
                owners = [b for b, fields in (known or {}).items() if k in fields]
                if not owners:
                    choices = list(LAYER_FIELDS) + [f for fields in (known or {}).values() for f in fields]
                    if known is None:
                        raise NetError(f"{where}: unknown param '{k}': layer type '{self.type_name}' is not "
                                       f"registered{did_you_mean(self.type_name, _registered())}, so its params "
                                       f"must be given in their block (xxx_param=dict({k}=...))")
                    blocks_txt = " or ".join(known) if known else "no param block"
                    raise NetError(f"{where}: unknown param '{k}'{did_you_mean(k, choices)}; "
                                   f"{self.type_name} takes {blocks_txt} and the layer fields "
                                   f"({', '.join(LAYER_FIELDS)})")
                if len(owners) > 1:
                    raise NetError(f"{where}: '{k}' is a field of both {owners[0]} and {owners[1]}; give it "
                                   f"in its block: {owners[0]}=dict({k}=...)")
                block = blocks.setdefault(owners[0], {})
                if k in block:
                    raise NetError(f"{where}: '{k}' given twice for {owners[0]}")
                block[k] = _values(v, known[owners[0]][k], where, f"{owners[0]}.{k}")
        return layer, blocks

    def _layer_message(self, names: dict, tops_of: dict, autonames: Counter) -> ProtoMessage:
        bottoms = [inp if isinstance(inp, str) else tops_of[inp.fn][inp.n] for inp in self.inputs]
        if self.in_place:
            tops = list(bottoms)
        else:
            tops = [_top_name(t, names, autonames) for t in self.tops]
        tops_of[self] = tops
        if self in names:
            name = names[self]
        elif self.ntop > 0:
            name = _top_name(self.tops[0], names, autonames)
        else:
            autonames[self.type_name] += 1
            name = f"{self.type_name}{autonames[self.type_name]}"
        layer_fields = dict(self.layer_fields)
        if "name" in layer_fields:
            name = layer_fields.pop("name")[-1]
        msg = ProtoMessage().add("name", name).add("type", self.type_name)
        for b in bottoms:
            msg.add("bottom", b)
        for t in tops:
            msg.add("top", t)
        for key in LAYER_FIELDS:
            for v in layer_fields.get(key, ()):
                msg.add(key, v)
        order = [b for b in (self.blocks or ()) if b in self.block_fields]   # declared order, like caffe.proto's
        order += [b for b in self.block_fields if b not in order]
        for block in order:
            fields = self.block_fields[block]
            body = ProtoMessage()
            for key, values in fields.items():
                for v in values:
                    body.add(key, v)
            msg.add(block, body)
        return msg

    def to_proto(self, name: str | None = None) -> ProtoMessage:
        return to_proto(self, name=name)

    def __repr__(self) -> str:
        return f"<L.{self.type_name} ntop={self.ntop}>"


def _top_name(top: Top, names: dict, autonames: Counter) -> str:
    if top not in names:
        autonames[top.fn.type_name] += 1
        names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
    return names[top]


def _registered():
    from layers.registry import registered_types
    return registered_types()


def _emit(roots, names: dict, name: str | None) -> ProtoMessage:
    """The net with the layers the roots need, each after the layers making its bottoms."""
    autonames: Counter = Counter()
    tops_of: dict[Function, list[str]] = {}
    done: dict[Function, ProtoMessage] = {}
    for root in roots:
        stack = [(root, False)]
        while stack:     # iterative depth-first post-order: deep nets would overflow Python's recursion
            fn, ready = stack.pop()
            if fn in done:
                continue
            if ready:
                done[fn] = fn._layer_message(names, tops_of, autonames)
                continue
            stack.append((fn, True))
            stack.extend((inp.fn, False) for inp in reversed(fn.inputs) if isinstance(inp, Top))
    net = ProtoMessage()
    if name:
        net.add("name", name)
    for layer in done.values():
        net.add("layer", layer)
    return net


def to_proto(*tops, name: str | None = None) -> ProtoMessage:
    """A net with every layer needed for the given Tops (or ntop=0 layers); blob names are generated."""
    return _emit([t.fn if isinstance(t, Top) else t for t in tops], {}, name)


def generated_by(argv=None) -> str:
    """'generated by: python <the command line>', for to_prototxt(header=...)."""
    return "generated by: python " + shlex.join(sys.argv if argv is None else argv)


class NetSpec:
    """Named tops: `n.conv1 = L.Convolution(...)`; `n.to_proto()` writes the layers they need, named."""

    def __init__(self, name: str = ""):
        object.__setattr__(self, "tops", {})
        object.__setattr__(self, "_name", name)

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, tuple):
            raise NetError(f"n.{name}: the layer has {len(value)} tops; assign each to its own name "
                           f"(n.a, n.b = L.Type(..., ntop={len(value)}))")
        if not isinstance(value, (Top, Function)):
            raise NetError(f"n.{name}: expected a Top (from L.Type(...)), got {value!r}")
        self.tops[name] = value

    def __getattr__(self, name: str):
        tops = self.__dict__.get("tops")    # absent while copy/pickle rebuild the object
        if tops is None or name not in tops:
            raise AttributeError(f"NetSpec has no top '{name}'{did_you_mean(name, tops or ())}")
        return tops[name]

    __setitem__ = __setattr__

    def __getitem__(self, name: str):
        return self.tops[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tops

    def keys(self) -> list[str]:
        return list(self.tops)

    def vals(self) -> list:
        return list(self.tops.values())

    def update(self, name: str, params: dict) -> None:
        """Add params to the layer that made top `name` (checked like the layer's kwargs)."""
        value = self.tops[name]
        (value.fn if isinstance(value, Top) else value)._update(params)

    def to_proto(self, name: str | None = None) -> ProtoMessage:
        """The net: every layer the assigned tops need, named after the attributes. `name`: the net's name
        (default: the NetSpec's)."""
        names = {v: k for k, v in self.tops.items()}
        roots = [v.fn if isinstance(v, Top) else v for v in self.tops.values()]
        return _emit(roots, names, self._name if name is None else name)

    def to_prototxt(self, header: str | None = None, name: str | None = None) -> str:
        """The prototxt text; `header` lines (e.g. generated_by()) go first as `# ` comments."""
        text = write(self.to_proto(name))
        if header:
            text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
        return text


class Layers:
    """`L.Type(*bottoms, **kwargs)` -> the layer's Top, tuple of Tops (ntop > 1) or the layer (ntop = 0)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*bottoms, **kwargs):
            fn = Function(type_name, bottoms, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = type_name
        return layer_fn


class _EnumNames:
    def __init__(self, message: str):
        self._message = message

    def __getattr__(self, name: str) -> Ident:
        if name.startswith("_"):
            raise AttributeError(name)
        return Ident(name)

    def __repr__(self) -> str:
        return f"P.{self._message}"


class Parameters:
    """`P.Pooling.MAX` -> Ident("MAX"), a bare enum name; which names a field takes is checked where used."""

    def __getattr__(self, message: str) -> _EnumNames:
        if message.startswith("_"):
            raise AttributeError(message)
        return _EnumNames(message)


layers = Layers()
params = Parameters()
