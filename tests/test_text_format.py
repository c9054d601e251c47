"""Tests for netdef.text_format: parser, writer, locations, errors, fuzzing."""

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netdef.errors import NetError, ParseError
from netdef.text_format import Field, Ident, Loc, Message, parse, parse_file, write


def vals(text, name="a"):
    return parse(text).values(name)


def one(text, name="a"):
    (v,) = vals(text, name)
    return v


def typed(v):
    return (type(v), v)


def perr(text, filename="x"):
    with pytest.raises(ParseError) as info:
        parse(text, filename)
    msg = str(info.value)
    assert "\n" not in msg and len(msg.splitlines()) == 1
    return msg


# ---------------------------------------------------------------- grammar

def test_basic_scalars_and_types():
    m = parse('name: "conv1"\nnum: 20\nlr: 0.5\nphase: TRAIN\nflag: true\n')
    assert m == Message([Field("name", "conv1"), Field("num", 20), Field("lr", 0.5),
                         Field("phase", Ident("TRAIN")), Field("flag", Ident("true"))])
    assert typed(m.get("num")) == (int, 20)
    assert typed(m.get("lr")) == (float, 0.5)
    assert type(m.get("name")) is str
    assert type(m.get("phase")) is Ident and m.get("phase") == "TRAIN"
    assert type(m.get("flag")) is Ident


def test_str_and_ident_are_not_equal_fields():
    assert parse('a: "TRAIN"') != parse("a: TRAIN")
    assert parse("a: 1") != parse("a: 1.0")


def test_space_and_tabs_before_colon():
    m = parse('bottom : "x"\n\tbottom\t:\t"y"\r\ntop:"z"')
    assert m.values("bottom") == ["x", "y"]
    assert m.values("top") == ["z"]


def test_nested_message_forms():
    m = parse("a { b: 1 } c: { } d < e: 2 > f: < > g{}")
    assert m == Message([
        Field("a", Message([Field("b", 1)])),
        Field("c", Message()),
        Field("d", Message([Field("e", 2)])),
        Field("f", Message()),
        Field("g", Message()),
    ])


def test_scalar_needs_colon():
    assert "expected ':' or '{' after 'kernel_size', found number 3" in perr("kernel_size 3")


def test_separators_and_comments():
    text = """# leading comment
    a: 1; b: 2, c: 3   # trailing comment
    d { e: 4; }  # another
    f: "#not a comment"
    """
    m = parse(text)
    assert m == Message([Field("a", 1), Field("b", 2), Field("c", 3),
                         Field("d", Message([Field("e", 4)])), Field("f", "#not a comment")])


def test_comment_at_eof_without_newline():
    assert parse("a: 1 # end") == Message([Field("a", 1)])


def test_empty_inputs():
    assert parse("") == Message()
    assert parse("  \n\t# only a comment\n\r\n") == Message()
    assert parse("").loc == Loc("<string>", 1, 1)


def test_repeated_keys_and_get_last():
    m = parse("top: 'a' top: 'b' top: 'c'")
    assert m.values("top") == ["a", "b", "c"]
    assert m.get("top") == "c"


def test_list_syntax():
    m = parse("a: [1, 2.5, x, 'y', -3]")
    assert [typed(v) for v in m.values("a")] == [(int, 1), (float, 2.5), (Ident, "x"), (str, "y"), (int, -3)]
    assert parse("a: []") == Message()
    assert parse("a: [] b: 1") == Message([Field("b", 1)])


def test_list_of_messages():
    m = parse("layer: [{ name: 'a' }, < name: 'b' >, {}]")
    assert m == Message([Field("layer", Message([Field("name", "a")])),
                         Field("layer", Message([Field("name", "b")])),
                         Field("layer", Message())])


@pytest.mark.parametrize("text,expected", [
    ("0", 0), ("3", 3), ("-3", -3), ("+3", 3), ("- 3", -3), ("0x1F", 31), ("0X1f", 31), ("-0x10", -16),
    ("017", 15), ("00", 0), ("123456789012345678901234567890", 123456789012345678901234567890),
    ("-99999999999999999999", -99999999999999999999),
])
def test_ints(text, expected):
    assert typed(one(f"a: {text}")) == (int, expected)


@pytest.mark.parametrize("text,expected", [
    ("1.5", 1.5), (".5", 0.5), ("5.", 5.0), ("1e-3", 0.001), ("-2.5E+4", -25000.0), ("1E3", 1000.0),
    ("1.5f", 1.5), ("2f", 2.0), ("2F", 2.0), ("-.5e1f", -5.0), ("1.0", 1.0), ("0.0", 0.0),
    ("inf", math.inf), ("-inf", -math.inf), ("+inf", math.inf), ("Infinity", math.inf),
    ("-INFINITY", -math.inf), ("INF", math.inf), ("1e400", math.inf),
])
def test_floats(text, expected):
    assert typed(one(f"a: {text}")) == (float, expected)


@pytest.mark.parametrize("text", ["nan", "NaN", "-nan", "NAN"])
def test_nan(text):
    v = one(f"a: {text}")
    assert type(v) is float and math.isnan(v)


def test_negative_zero():
    v = one("a: -0.0")
    assert v == 0.0 and math.copysign(1.0, v) == -1.0
    assert typed(one("a: -0")) == (int, 0)


def test_inf_nan_only_as_values():
    # as field names they are just names; bare idents stay Ident
    m = parse("inf: nan nan: MAX")
    assert math.isnan(m.get("inf")) and m.get("nan") == Ident("MAX")
    assert typed(one("a: infinite")) == (Ident, "infinite")
    assert typed(one("a: inf_x")) == (Ident, "inf_x")


@pytest.mark.parametrize("text,expected", [
    (r'"plain"', "plain"),
    (r"'single'", "single"),
    (r'"a\\b"', "a\\b"),
    (r'"say \"hi\""', 'say "hi"'),
    (r"'it\'s'", "it's"),
    (r'"it\'s"', "it's"),
    (r"""'say "x"'""", 'say "x"'),
    (r'"\n\t\r\a\b\f\v\?"', "\n\t\r\a\b\f\v?"),
    (r'"\101\0\7x"', "A\x00\x07x"),
    (r'"\1012"', "A2"),
    (r'"\x41\x7e\xa"', "A~\n"),
    (r'"\303\251t\xc3\xa9"', "été"),
    (r'"C:\\data\\"', "C:\\data\\"),
    (r'"ünïcödé ✓ 😀"', "ünïcödé ✓ 😀"),
    (r'""', ""),
])
def test_string_escapes(text, expected):
    assert typed(one(f"a: {text}")) == (str, expected)


def test_adjacent_strings_concatenate():
    assert one('a: "a" "b"') == "ab"
    assert one("a: 'x' \"y\" 'z'") == "xyz"
    assert one('a: "first"\n   # comment between\n   "second"\n') == "firstsecond"
    # escapes join at the byte level, like protobuf
    assert one(r'a: "\303" "\251"') == "é"
    assert parse('a: "x" "y" b: 1') == Message([Field("a", "xy"), Field("b", 1)])


def test_realistic_caffe_layer():
    m = parse("""
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 }
  param { lr_mult: 2 }
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 }
  }
  include { phase: TRAIN }
}
""")
    layer = m.get("layer")
    assert layer.get("name") == "conv1"
    assert [p.get("lr_mult") for p in layer.values("param")] == [1, 2]
    cp = layer.get("convolution_param")
    assert cp.get("kernel_size") == 5
    assert cp.get("bias_filler").get("value") == 0.1
    assert layer.get("include").get("phase") == Ident("TRAIN")


# ---------------------------------------------------------------- locations

def test_locs():
    text = ('name: "net"\n'            # line 1
            "layer {\n"                 # line 2
            "  name: 'a'\n"             # line 3
            "\tbottom : \"x\"\n"        # line 4: tab is one column
            "  param   <  lr: [1,\n"    # line 5
            "     2.5] >\n"             # line 6
            "}\n")
    m = parse(text, "net.prototxt")
    assert m.loc == Loc("net.prototxt", 1, 1)
    assert m.first("name").loc == Loc("net.prototxt", 1, 1)
    layer_f = m.first("layer")
    assert layer_f.loc == Loc("net.prototxt", 2, 1)
    layer = layer_f.value
    assert layer.loc == Loc("net.prototxt", 2, 7)
    assert layer.first("name").loc == Loc("net.prototxt", 3, 3)
    assert layer.first("bottom").loc == Loc("net.prototxt", 4, 2)
    param_f = layer.first("param")
    assert param_f.loc == Loc("net.prototxt", 5, 3)
    assert param_f.value.loc == Loc("net.prototxt", 5, 11)
    assert [f.loc for f in param_f.value.all("lr")] == [Loc("net.prototxt", 5, 19), Loc("net.prototxt", 6, 6)]
    assert str(param_f.loc) == "net.prototxt:5:3"


def test_locs_list_of_messages_and_signs():
    m = parse("a: [ {b: 1}, -2 ]\r\nc: 3")
    fs = m.all("a")
    assert fs[0].loc == Loc("<string>", 1, 6)
    assert fs[0].value.loc == Loc("<string>", 1, 6)
    assert fs[1].loc == Loc("<string>", 1, 14)
    assert m.first("c").loc == Loc("<string>", 2, 1)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("text,prefix,phrase", [
    ("layer {\n  name: 'a'\n", "x:3:1:", "expected '}' to close 'layer' opened at 1:7, found end of file"),
    ("a {\n b: 1\n >", "x:3:2:", "expected '}' to close 'a' opened at 1:3, found '>'"),
    ("a: 1\n}", "x:2:1:", "expected field name or end of file, found '}'"),
    ("layer {\n  convolution_param {\n    kernel_size 3\n", "x:3:17:",
     "expected ':' or '{' after 'kernel_size', found number 3"),
    ("a: 1\nb: 'x\nc: 2", "x:2:4:", "unterminated string"),
    ('a: "abc', "x:1:4:", "unterminated string"),
    ('a: "ab\\', "x:1:4:", "unterminated string"),
    ('a:\n  "ok\\q"', "x:2:6:", "invalid escape sequence '\\q'"),
    ('a: "\\x"', "x:1:5:", "invalid escape sequence '\\x'"),
    ('a: "\\777"', "x:1:5:", "out of range"),
    ('a: "\\377"', "x:1:4:", "invalid UTF-8"),
    ("a: -foo", "x:1:5:", "expected number after '-', found identifier foo"),
    ("a: - 'x'", "x:1:6:", "expected number after '-', found string 'x'"),
    ("a:", "x:1:3:", "expected value for 'a', found end of file"),
    ("a: }", "x:1:4:", "expected value for 'a', found '}'"),
    ("a: [1, 2", "x:1:9:", "expected ',' or ']' in list of 'a', found end of file"),
    ("a: [1 2]", "x:1:7:", "expected ',' or ']' in list of 'a', found number 2"),
    ("a: [1,]", "x:1:7:", "expected value for 'a', found ']'"),
    ("a: [[1]]", "x:1:5:", "expected value for 'a', found '['"),
    ("b { 3 }", "x:1:5:", "expected field name or '}', found number 3"),
    ("\"s\": 1", "x:1:1:", 'expected field name or end of file, found string "s"'),
    ("[ext.name]: 1", "x:1:1:", "extension names"),
    ("a: 1 @", "x:1:6:", "unexpected character '@'"),
    ("a: 08", "x:1:4:", "invalid octal number '08'"),
    ("a: 1e", "x:1:4:", "invalid number '1e'"),
    ("a: 3abc", "x:1:4:", "invalid number '3abc'"),
    ("a: 1.5.3", "x:1:4:", "invalid number"),
    ("a: 0x", "x:1:4:", "invalid number '0x'"),
    ("a: 1;; b: 2", "x:1:6:", "expected field name or end of file, found ';'"),
    ("a: 1\x00", "x:1:5:", "unexpected character '\\x00'"),
])
def test_errors(text, prefix, phrase):
    msg = perr(text)
    assert msg.startswith(prefix + " "), msg
    assert phrase in msg, msg


def test_error_found_string_is_one_line_and_short():
    msg = perr("x: 1 '" + "\u2028\x85" * 50 + "' : 3")
    assert msg.startswith("x:1:6: expected field name or end of file, found string '")
    assert len(msg) < 120


def test_error_is_net_error():
    with pytest.raises(NetError):
        parse("a {")


def test_deep_nesting_limit():
    ok = "a {" * 100 + "}" * 100
    m = parse(ok)
    depth = 0
    while m.fields:
        m = m.get("a")
        depth += 1
    assert depth == 100
    msg = perr("a {" * 101 + "}" * 101)
    assert msg == "x:1:303: nesting deeper than 100"
    assert "nesting deeper than 100" in perr("a: [" + "{a: [" * 200)
    assert "nesting deeper than 100" in perr("a<" * 100000)


def test_huge_decimal_int():
    big = 7 ** 8000  # more digits than Python's default int<->str limit
    assert one(f"a: {hex(big)}") == big
    assert one(f"a: -{hex(big)}") == -big
    assert "integer too long" in perr("a: " + "9" * 5000)


# ---------------------------------------------------------------- parse_file

def test_parse_file(tmp_path):
    p = tmp_path / "net.prototxt"
    p.write_bytes("\ufeffname: 'ü'\nlayer {\n  top: 'x'\n}\n".encode("utf-8"))
    m = parse_file(p)
    assert m == Message([Field("name", "ü"), Field("layer", Message([Field("top", "x")]))])
    assert m.first("layer").value.first("top").loc == Loc(str(p), 3, 3)


def test_parse_file_missing(tmp_path):
    p = tmp_path / "missing.prototxt"
    with pytest.raises(NetError) as info:
        parse_file(p)
    assert not isinstance(info.value, ParseError)
    assert str(info.value) == f"cannot read net file '{p}': No such file or directory"
    with pytest.raises(NetError, match="cannot read net file"):
        parse_file(tmp_path)  # a directory


def test_parse_file_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text("a: 1\nb 2\n")
    with pytest.raises(ParseError, match=r"^" + str(p).replace("\\", "\\\\") + r":2:3: expected ':'"):
        parse_file(str(p))
    p.write_bytes(b"a: 1\nb: '\xff'\n")
    with pytest.raises(ParseError, match=r"bad\.prototxt:2:5: invalid UTF-8"):
        parse_file(p)


# ---------------------------------------------------------------- writer

def test_write_format():
    m = Message([Field("name", "n"), Field("layer", Message([
        Field("phase", Ident("TRAIN")), Field("k", 3), Field("s", 1.0), Field("p", Message())]))])
    assert write(m) == ('name: "n"\n'
                        "layer {\n"
                        "  phase: TRAIN\n"
                        "  k: 3\n"
                        "  s: 1.0\n"
                        "  p {\n"
                        "  }\n"
                        "}\n")
    assert write(m, indent="\t").splitlines()[2] == "\tphase: TRAIN"
    assert write(Message()) == ""


@pytest.mark.parametrize("value,text", [
    (1.0, "1.0"), (-0.0, "-0.0"), (1e16, "1e+16"), (0.1, "0.1"), (math.inf, "inf"), (-math.inf, "-inf"),
    (math.nan, "nan"), (5, "5"), (-5, "-5"), (True, "true"), (False, "false"),
    ("a\"b\\c\nd\te\rf", r'"a\"b\\c\nd\te\rf"'), ("\x01\x7f", r'"\001\177"'), ("é✓", '"é✓"'),
    ("\x85\u2028", r'"\302\205\342\200\250"'), ("it's", '"it\'s"'),
])
def test_write_scalars(value, text):
    assert write(Message([Field("a", value)])) == f"a: {text}\n"


def test_write_rejects_unwritable():
    with pytest.raises(ValueError):
        write(Message([Field("a", Ident("not an ident"))]))
    with pytest.raises(ValueError):
        write(Message([Field("a", Ident("nan"))]))
    with pytest.raises(ValueError):
        write(Message([Field("bad name", 1)]))
    with pytest.raises(TypeError):
        write(Message([Field("a", [1, 2])]))


LENET = r"""
name: "LeNet"
layer {
  name: "mnist"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TRAIN
  }
  transform_param {
    scale: 0.00390625
    mirror: false
    mean_value: [104, 117.0, 123]
  }
  data_param {
    source: "examples/mnist/mnist_train_lmdb"
    batch_size: 64
    backend: LMDB
  }
}
layer {
  name: "mnist"
  type: "Data"
  top: "data"
  top: "label"
  include: { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: 'examples/mnist/mnist_test_lmdb' batch_size: 100 backend: LMDB }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom : "data"
  top: "conv1"
  param { lr_mult: 1 }
  param { lr_mult: 2 }
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" }
  }
}
layer {
  name: "pool1"  type: "Pooling"  bottom: "conv1"  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool1"
  top: "ip1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param {
    num_output: 500
    weight_filler { type: "gaussian" std: 1e-2 }
    bias_filler { type: "constant" value: 0.2f }
  }
}
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer {
  name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
  include { phase: TEST }
}
layer {
  name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss"
  loss_weight: 1
}
"""


def test_roundtrip_lenet():
    m = parse(LENET, "lenet.prototxt")
    assert len(m.all("layer")) == 8
    assert m.all("layer")[0].value.get("transform_param").values("mean_value") == [104, 117.0, 123]
    text = write(m)
    again = parse(text)
    assert again == m
    assert write(again) == text
    assert again.all("layer")[4].value.get("inner_product_param").get("bias_filler").get("value") == 0.2


def test_roundtrip_tricky_values():
    tricky = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2,
              1e16, 123.0, 2 ** 64, -2 ** 63, 10 ** 100, 7 ** 8000, -(7 ** 8000),
              'quote " and \' and \\ and \\\\', "line1\nline2\r\n\ttab", "\x00\x01\x1f\x7f",
              "ünïcödé 😀 \u2028 \x85 \ufeff", "\ud800 lone surrogate", "\\x41 \\101", "C:\\data\\", "",
              Ident("TRAIN"), Ident("_x9"), Ident("true")]
    m = Message([Field("v", v) for v in tricky] + [Field("m", Message([Field("inner", v) for v in tricky]))])
    back = parse(write(m))
    assert back == m
    assert math.copysign(1.0, back.values("v")[3]) == -1.0
    assert [type(v) for v in back.values("v")] == [type(v) for v in tricky]


def test_performance_5000_lines():
    text = LENET * 80
    assert text.count("\n") > 5000
    start = time.perf_counter()
    m = parse(text)
    elapsed = time.perf_counter() - start
    assert len(m.all("layer")) == 640
    assert elapsed < 1.0


# ---------------------------------------------------------------- hypothesis

_FLOAT_WORDS = {"inf", "infinity", "nan"}
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
idents = names.filter(lambda s: s.lower() not in _FLOAT_WORDS).map(Ident)
scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(2 ** 200), max_value=2 ** 200),
    st.floats(),
    st.text(),
    st.text(alphabet='\\"\'\n\r\t\x00\x7f #{}:[]<>;,é'),
    idents,
)


def _to_message(pairs):
    return Message([Field(k, v) for k, v in pairs])


messages = st.recursive(
    st.lists(st.tuples(names, scalars), max_size=4).map(_to_message),
    lambda inner: st.lists(st.tuples(names, st.one_of(scalars, inner)), max_size=4).map(_to_message),
    max_leaves=25,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(messages)
def test_hypothesis_write_parse_roundtrip(m):
    text = write(m)
    back = parse(text)
    assert back == m
    assert write(back) == text


def _parse_or_parse_error(text):
    try:
        m = parse(text, "f")
    except ParseError as e:
        msg = str(e)
        assert msg.startswith("f:") and len(msg.splitlines()) == 1, msg
        return None
    assert isinstance(m, Message)
    # anything that parses must also round trip through the writer
    assert parse(write(m)) == m
    return m


@FUZZ
@given(st.text(max_size=200))
def test_hypothesis_random_text(text):
    _parse_or_parse_error(text)


@FUZZ
@given(st.text(alphabet=' \t\n#{}<>[]:;,-+."\'\\abx019eEfn', max_size=80))
def test_hypothesis_random_token_soup(text):
    _parse_or_parse_error(text)


SAMPLE = LENET[:900] + 'x: [1, -2.5e3, "a\\tb" "c", {y: inf}, <z: -nan>] w: 0x1F v: 017 u: 1.5f\n'


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace"]),
                          st.integers(min_value=0, max_value=len(SAMPLE)),
                          st.characters(codec="utf-8") | st.sampled_from(list('{}<>[]:"\'\\#\n;,-.0x'))),
                min_size=1, max_size=6))
def test_hypothesis_mutated_prototxt(ops):
    text = SAMPLE
    for op, i, c in ops:
        i = min(i, len(text))
        if op == "insert":
            text = text[:i] + c + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + c + text[i + 1:]
    _parse_or_parse_error(text)
