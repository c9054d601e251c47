#!/usr/bin/env python
"""Run a trained RHD net on your own images: 2D and 3D hand keypoints, and pictures of them.

    python tools/predict.py IMAGE_OR_FOLDER... --weights W [--net DEPLOY.prototxt]
                            [--box x1,y1,x2,y2 | --crop-box x1,y1,x2,y2 | --boxes FILE.json] [--K fx,fy,cx,cy]
                            [--hand left|right] [--net-hand both|left|right] [--bones avg_bone.txt]
                            [--out DIR] [--batch B] [--device cpu|cuda] [--dtype float32|float64] [--debug]

A folder stands for its image files (png, jpg, jpeg, bmp, tif, tiff, webp; not its subfolders), in name order;
its boxes.json is used when no box option is given. Writes DIR/predictions.json and, per image,
<name>_skeleton.png (the 2D skeletons over the full image, crop boxes in grey) and per hand <name>_hand<j>_3d.png
(the root-relative 3D skeleton from the camera and from the side) and <name>_hand<j>_heatmaps.png (the net's
heatmaps over the crop, each scaled to its peak).

The crop is the converter's (layers.hand.rhd.convert, SPEC section 3), so the net sees what it was trained on:
  --box         a hand's box (e.g. a detector's; pixel bounds, inclusive; fractions rounded), grown as the converter grows
                a hand's mask box (convert.square_crop_box): a square of side ceil(1.25 x the longer side),
                centred on the box's centre (the converter centres on the mask's centroid, which a box lacks);
  --crop-box    the crop itself, used as is (e.g. the bbx_* of a converted sample: then the prediction equals
                the test net's on that sample);
  no box        the centre square of the image (side min(W, H)), printed.
Pixels outside the image are 128 (convert.crop_pixels); the crop is resized to the net's S x S as ReadImage
resizes (readers.resize_square). A box must lie inside the image; a crop box must overlap it.

boxes.json maps an image's file name (relative to the json's folder, or its base name) to a list of hands, or
to {"K": CAMERA, "hands": [HAND, ...]}; a HAND is [x1, y1, x2, y2] (a hand box), {"box": [...]} or
{"crop_box": [...]}, with an optional "hand": "left" | "right". CAMERA: [fx, fy, cx, cy], 9 numbers row-major or
3 x 3. An image it does not list gets the centre square.

Camera: --K (for every image), else boxes.json's, else DEFAULT_FOCAL_320 px scaled by width / 320 (RHD's
images are 320 x 320; the synthetic set draws its focal length in 280-300 px, RHD-like), principal point at
the centre (W / 2, H / 2); printed and stored in the JSON. The 3D depends on it: absolute depth directly,
root-relative shape slightly.

Hands: the latent25d and heatmap25d nets of tools/make_rhd_nets.py train on both hands of every RHD image as
they are (the index lists hold idx = 2 * image_id + hand for hand 0 left and 1 right; the converter crops both
without mirroring), so a left or right hand goes in unchanged and --hand only labels it in the JSON (default:
boxes.json's "hand", else none). A deploy net with an is_left input (synth_small: HandMirror mirrors left
hands' crops inside the net, which sees right hands only, and mirrors its 2D output back) is fed each hand's
side; a hand whose side is not given is taken as a right hand, and predict says so. A net trained on one side
(the author's nets exclude missing_left_new.txt and so see left hands only) takes --net-hand left: a right
hand's crop is then mirrored (flipped left-right, its box mirrored about the principal point: x -> 2 cx - x),
and the prediction mirrored back (u -> 2 cx - u, X -> -X); the JSON says "mirrored". The hand's side must then
be known (a net with an is_left input is told the side the mirrored hand shows).

Bone lengths (ScaleRecovery's avg_bone, mm, which set the metric scale): --bones, else avg_bone.txt beside the
weights, else data/rhd/training/all_hand/avg_bone.txt (the converter's default output: the training set's).

--net: a deploy net of tools/make_rhd_nets.py (Inputs image, bbox, K, avg_bone; outputs joints_2d, joints_3d,
joints_3d_rel, root_status). Default: the prototxt/rhd_*_deploy.prototxt whose layers the weights fill exactly.
A user error (unreadable image, box outside the image, weights that do not fit the net, ...) prints one line
and exits 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netdef.errors import NetError, add_debug_flag, run_tool  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FOCAL_320 = 290.0          # px at 320 px width: the middle of the synthetic set's 280-300 (RHD-like)
DEFAULT_BONES = os.path.join("data", "rhd", "training", "all_hand", "avg_bone.txt")
BOXES_NAME = "boxes.json"
INPUTS = ("image", "bbox", "K", "avg_bone")
OUTPUTS = ("joints_2d", "joints_3d", "joints_3d_rel")
HANDS = ("left", "right")


@dataclass
class Hand:
    """One hand to predict: how its crop is chosen, its side, and (after the run) the results."""
    kind: str                      # "box" (grown), "crop_box" (as is) or "centre" (the centre square)
    box: tuple | None
    side: str | None
    crop: tuple = ()
    mirrored: bool = False
    side_seen: str | None = None   # the side the net is told (is_left): side, or --net-hand's where mirrored
    result: dict | None = None
    maps: object = None
    crop_pixels: object = None


@dataclass
class Item:
    """One image: its path, pixels (until its pictures are drawn), camera and hands."""
    path: str
    stem: str
    K: list
    K_source: str
    hands: list
    image: object = None
    size: tuple = ()
    record: dict = field(default_factory=dict)


# ---- arguments ------------------------------------------------------------------------------------------------

def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise NetError(f"{what} must be {count} comma-separated numbers, got '{text}'")
    return values


def _int_box(values, what: str) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 as pixel bounds (inclusive); a detector's fractional coordinates are rounded to the nearest
    pixel."""
    import math
    try:
        numbers = [float(v) for v in values]
        ok = len(numbers) == 4 and all(math.isfinite(v) for v in numbers) and not any(isinstance(v, bool)
                                                                                      for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise NetError(f"{what} must be 4 numbers x1, y1, x2, y2 (pixel bounds, inclusive), got {values!r}")
    box = tuple(int(math.floor(v + 0.5)) for v in numbers)
    if box[0] > box[2] or box[1] > box[3]:
        raise NetError(f"{what} {list(box)} is empty: need x1 <= x2 and y1 <= y2")
    return box


def camera_matrix(values, what: str) -> list[list[float]]:
    """[fx, fy, cx, cy], 9 numbers row-major or 3 x 3 -> K as a 3 x 3 list; fx, fy > 0."""
    import numpy as np
    try:
        v = np.asarray(values, np.float64).reshape(-1)
    except (TypeError, ValueError):
        v = np.zeros(0)
    if v.size == 4:
        v = np.array([v[0], 0, v[2], 0, v[1], v[3], 0, 0, 1], np.float64)
    if v.size != 9 or not np.all(np.isfinite(v)) or not (v[0] > 0 and v[4] > 0):
        raise NetError(f"{what} must be fx, fy, cx, cy (or the 3 x 3 matrix) with fx, fy > 0, got {values!r}")
    return v.reshape(3, 3).tolist()


def default_camera(width: int, height: int) -> list[list[float]]:
    f = DEFAULT_FOCAL_320 * width / 320.0
    return [[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]]


def list_images(paths) -> list[tuple[str, str | None]]:
    """(image path, boxes.json of its folder or None) for each argument: a file, or a folder's image files."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            names = sorted(n for n in os.listdir(p) if n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(p, n)))
            if not names:
                raise NetError(f"folder '{p}' holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
            boxes = os.path.join(p, BOXES_NAME)
            out += [(os.path.join(p, n), boxes if os.path.isfile(boxes) else None) for n in names]
        elif os.path.isfile(p):
            out.append((p, None))
        else:
            raise NetError(f"no such image or folder '{p}'")
    return out


def read_boxes(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise NetError(f"cannot read '{path}': {e.strerror or e}") from None
    except ValueError as e:
        raise NetError(f"'{path}' is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise NetError(f"'{path}' must map image file names to hands (a JSON object)")
    return data


def _hands_from_entry(entry, where: str, side_default) -> tuple[list[Hand], object]:
    """A boxes.json value -> (hands, camera or None)."""
    camera = None
    if isinstance(entry, dict):
        camera = entry.get("K")
        entry = entry.get("hands", [])
    if not isinstance(entry, list):
        raise NetError(f"{where}: expected a list of hands or {{\"K\": ..., \"hands\": [...]}}")
    hands = []
    for j, h in enumerate(entry):
        w = f"{where} hand {j}"
        if isinstance(h, list):
            hands.append(Hand("box", _int_box(h, f"{w} box"), side_default))
            continue
        if not isinstance(h, dict) or ("box" in h) == ("crop_box" in h):
            raise NetError(f"{w}: expected [x1, y1, x2, y2] or an object with one of \"box\", \"crop_box\"")
        side = h.get("hand", side_default)
        if side is not None and side not in HANDS:
            raise NetError(f"{w}: \"hand\" must be \"left\" or \"right\", got {side!r}")
        kind = "box" if "box" in h else "crop_box"
        hands.append(Hand(kind, _int_box(h[kind], f"{w} {kind}"), side))
    return hands, (camera_matrix(camera, f"{where} K") if camera is not None else None)


def plan_items(args) -> list[Item]:
    """Every image with its hands and camera, from the arguments and boxes.json files (nothing read yet)."""
    if sum(x is not None for x in (args.box, args.crop_box, args.boxes)) > 1:
        raise NetError("give one of --box, --crop-box, --boxes")
    cli_box = None
    if args.box is not None:
        cli_box = Hand("box", _int_box(_numbers(args.box, 4, "--box"), "--box"), args.hand)
    elif args.crop_box is not None:
        cli_box = Hand("crop_box", _int_box(_numbers(args.crop_box, 4, "--crop-box"), "--crop-box"), args.hand)
    cli_k = camera_matrix(_numbers(args.K, 4, "--K"), "--K") if args.K else None
    files = list_images(args.images)
    tables: dict[str, dict] = {}
    if args.boxes:
        tables[args.boxes] = read_boxes(args.boxes)
    items, stems = [], set()
    for path, folder_boxes in files:
        boxes_path = args.boxes or (folder_boxes if cli_box is None else None)
        if boxes_path and boxes_path not in tables:
            tables[boxes_path] = read_boxes(boxes_path)
            print(f"boxes from {boxes_path}")
        hands, camera = [Hand("centre", None, args.hand)], None
        if cli_box is not None:
            hands = [Hand(cli_box.kind, cli_box.box, cli_box.side)]
        elif boxes_path:
            table = tables[boxes_path]
            rel = os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(boxes_path)))
            key = rel if rel in table else os.path.basename(path)
            if key in table:
                hands, camera = _hands_from_entry(table[key], f"{boxes_path}: '{key}'", args.hand)
        stem = base = os.path.splitext(os.path.basename(path))[0]
        n = 1
        while stem in stems:
            n += 1
            stem = f"{base}_{n}"
        stems.add(stem)
        if cli_k is not None:
            k, source = cli_k, "--K"
        elif camera is not None:
            k, source = camera, boxes_path
        else:
            k, source = None, "default"
        items.append(Item(path, stem, k, source, hands))
    return items


# ---- the net ----------------------------------------------------------------------------------------------------

def _shown(path: str) -> str:
    """A path relative to the current folder when it lies under it, else absolute."""
    rel = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if rel.startswith("..") else rel


def _load_into(net, weights: str, strict_missing: bool = True) -> None:
    from nets.weights import load_weights
    report = load_weights(net, weights)
    with_blobs = [st.name for st in net.plan if st.has_blobs]
    if not report.loaded and with_blobs:
        raise NetError(f"weights '{weights}' match no layer of the net '{net.definition.filename}' (the file has "
                       f"{', '.join(report.ignored[:4]) or 'no layers'}{', ...' if len(report.ignored) > 4 else ''})")
    if report.missing and strict_missing:
        raise NetError(f"weights '{weights}' do not fit the net '{net.definition.filename}': they lack its "
                       f"layer(s) {', '.join(report.missing[:6])}{', ...' if len(report.missing) > 6 else ''}")


def open_net(weights: str, net_path: str | None, device, dtype: str):
    """The deploy net with the weights loaded: net_path, or the committed deploy net the weights fit exactly."""
    from nets.net import Net
    if not os.path.isfile(weights):
        raise NetError(f"cannot read weights '{weights}': no such file")
    if net_path:
        candidates = [net_path]
    else:
        found = sorted(glob.glob(os.path.join(REPO, "prototxt", "rhd_*_deploy.prototxt")))
        base = os.path.basename(weights)
        # the one the weights' name points at first (rhd_synth_small_iter_N...: rhd_synth_small_deploy)
        candidates = sorted(found, key=lambda p: not base.startswith(os.path.basename(p)[:-len("deploy.prototxt")]))
    tried = []
    for path in candidates:
        net = Net(path, phase="TEST", device=device, workers=0)
        if dtype == "float64":
            net.double()
        try:
            _check_deploy(net)
            _load_into(net, weights)
            if not net_path:
                print(f"net: {_shown(path)} (fits the weights)")
            return net, path
        except NetError as e:
            net.close()
            if net_path:
                raise
            tried.append(os.path.basename(path))
            last = e
    raise NetError(f"weights '{weights}' fit none of the deploy nets {', '.join(tried)} ({last}); give --net")


def _check_deploy(net) -> None:
    where = net.definition.filename
    missing = [b for b in INPUTS if b not in net.inputs]
    if missing:
        raise NetError(f"'{where}' is not a deploy net of tools/make_rhd_nets.py: it lacks the Input blob(s) "
                       f"{', '.join(missing)} (needs {', '.join(INPUTS)})")
    missing = [b for b in OUTPUTS if b not in net.blob_shapes]
    if missing:
        raise NetError(f"'{where}' is not a deploy net of tools/make_rhd_nets.py: it has no blob(s) "
                       f"{', '.join(missing)}")


def read_bones(args) -> tuple:
    import numpy as np
    from layers.hand.rhd.memo import read_numbers
    if args.bones:
        path = args.bones
    else:
        beside = os.path.join(os.path.dirname(os.path.abspath(args.weights)), "avg_bone.txt")
        path = next((p for p in (beside, DEFAULT_BONES) if os.path.isfile(p)), None)
        if path is None:
            raise NetError(f"no bone lengths: none at '{beside}' or '{DEFAULT_BONES}'; give --bones avg_bone.txt "
                           f"(the training set's, written by tools/prepare_rhd.py)")
    return np.asarray(read_numbers(path, 20, "average bone lengths"), np.float64), path


# ---- crops ------------------------------------------------------------------------------------------------------

def crop_of(hand: Hand, width: int, height: int, where: str) -> tuple[int, int, int, int]:
    """The crop box of a hand (module doc), or a one-line error for a box outside the image."""
    from layers.hand.readers import MAX_CROP_SIDE
    from layers.hand.rhd.convert import square_crop_box
    if hand.kind == "centre":
        side = min(width, height)
        x1, y1 = (width - side) // 2, (height - side) // 2
        return x1, y1, x1 + side - 1, y1 + side - 1
    x1, y1, x2, y2 = hand.box
    if hand.kind == "box":
        if x1 < 0 or y1 < 0 or x2 >= width or y2 >= height:
            raise NetError(f"{where}: box {list(hand.box)} is outside the image ({width} x {height}: "
                           f"x in 0..{width - 1}, y in 0..{height - 1})")
        crop = square_crop_box(hand.box)
    else:
        if x2 < 0 or y2 < 0 or x1 >= width or y1 >= height:
            raise NetError(f"{where}: crop box {list(hand.box)} is outside the image ({width} x {height})")
        crop = hand.box
    if max(crop[2] - crop[0], crop[3] - crop[1]) + 1 > MAX_CROP_SIDE:
        raise NetError(f"{where}: crop {list(crop)} is over {MAX_CROP_SIDE} px on a side")
    return tuple(int(v) for v in crop)


def prepare(item: Item, size: int, net_hand: str, side_input: bool = False) -> list[tuple]:
    """Read the image, choose each hand's crop; returns the net's input rows (image planes, bbox, K, hand).
    side_input: the net takes each hand's side (an is_left input)."""
    import numpy as np
    from layers.hand.readers import decode_image, resize_square
    from layers.hand.rhd.convert import crop_pixels
    try:
        with open(item.path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise NetError(f"cannot read image '{item.path}': {e.strerror or e}") from None
    image = decode_image(data, f"'{item.path}'")
    h, w = image.shape[:2]
    item.image, item.size = image, (w, h)
    if item.K is None:
        item.K = default_camera(w, h)
        item.K_source = f"default ({DEFAULT_FOCAL_320:g} px x width / 320, principal point at the centre)"
        print(f"{item.path}: no K given, using the default fx = fy = {item.K[0][0]:g}, cx = {w / 2:g}, "
              f"cy = {h / 2:g} ({DEFAULT_FOCAL_320:g} px at 320 px width, principal point at the centre)")
    k = np.asarray(item.K, np.float64)
    rows = []
    for j, hand in enumerate(item.hands):
        hand.crop = crop_of(hand, w, h, f"{item.path} hand {j}")
        if hand.kind == "centre":
            print(f"{item.path}: no box, using the centre square {list(hand.crop)} as the crop")
        pixels = crop_pixels(image, hand.crop)
        bbox = np.asarray(hand.crop, np.float64)
        if side_input and hand.side is None and net_hand == "both":
            print(f"{item.path} hand {j}: side not given, taken as a right hand (give --hand or \"hand\" in "
                  f"boxes.json)")
        if net_hand != "both" and hand.side is None:
            raise NetError(f"{item.path} hand {j}: --net-hand {net_hand} needs each hand's side: give --hand or "
                           f"\"hand\" in boxes.json")
        hand.mirrored = net_hand != "both" and hand.side != net_hand
        hand.side_seen = net_hand if hand.mirrored else hand.side
        if hand.mirrored:     # the crop of the image mirrored about x = cx
            pixels = pixels[:, ::-1]
            cx2 = 2 * k[0, 2]
            bbox = np.array([cx2 - hand.crop[2], hand.crop[1], cx2 - hand.crop[0], hand.crop[3]])
        resized = resize_square(np.ascontiguousarray(pixels), size)
        hand.crop_pixels = resized
        rows.append((resized.transpose(2, 0, 1), bbox, k.reshape(9), hand))
    return rows


# ---- running ----------------------------------------------------------------------------------------------------

def run_batch(net, rows, bones, heat_blob) -> None:
    """One forward over rows; fills each hand's result (mirrored back where it was mirrored)."""
    import numpy as np
    import torch

    from layers.hand.reconstruct import ROOT_CLAMPED, ROOT_STATUS_NAMES
    n = len(rows)
    dev = net.device
    feed = {"image": torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.float32)),
            "bbox": torch.from_numpy(np.stack([r[1] for r in rows])),
            "K": torch.from_numpy(np.stack([r[2] for r in rows])),
            "avg_bone": torch.from_numpy(np.tile(bones, (n, 1)))}
    if "is_left" in net.inputs:     # the side the net sees: a hand predict mirrored has turned
        feed["is_left"] = torch.tensor([[1.0 if r[3].side_seen == "left" else 0.0] for r in rows])
    with torch.no_grad():
        net.forward(**{k: v.to(dev) for k, v in feed.items()})
    b = net.blobs
    j2 = b["joints_2d"].double().cpu().numpy().reshape(n, -1, 2)
    j3 = b["joints_3d"].double().cpu().numpy().reshape(n, -1, 3)
    rel = b["joints_3d_rel"].double().cpu().numpy().reshape(n, -1, 3)
    status = b["root_status"].cpu().numpy().reshape(n).astype(int) if "root_status" in b else None
    maps = b[heat_blob].float().cpu().numpy() if heat_blob else None
    for i, (_, _, k, hand) in enumerate(rows):
        p2, p3, pr = j2[i].copy(), j3[i].copy(), rel[i].copy()
        if hand.mirrored:
            p2[:, 0] = 2 * k[2] - p2[:, 0]
            p3[:, 0] *= -1
            pr[:, 0] *= -1
        code = int(status[i]) if status is not None else None
        hand.result = {
            "joints_2d_px": p2.tolist(), "joints_3d_mm": p3.tolist(), "joints_3d_rel_mm": pr.tolist(),
            "root_depth_mm": float(p3[0, 2]),
            "root_status": ROOT_STATUS_NAMES.get(code) if code is not None else None,
            "root_status_code": code,
            "root_clamped": code in ROOT_CLAMPED if code is not None else None,
            "root_ambiguous": code == 1 if code is not None else None,
        }
        if maps is not None:
            hand.maps = maps[i][:, :, ::-1] if hand.mirrored else maps[i]


CROP_RULES = {"box": "box grown to the converter's square (x1.25)", "crop_box": "as given",
              "centre": "centre square of the image"}


def finish(item: Item, out: str, pictures: bool = True) -> None:
    """The JSON record of one image and, when `pictures`, its pictures; frees its pixels."""
    names = draw_pictures(item, out) if pictures else {}
    hands = []
    for j, hand in enumerate(item.hands):
        hands.append({"hand": hand.side, "box": list(hand.box) if hand.kind == "box" else None,
                      "crop_box": list(hand.crop), "crop_rule": CROP_RULES[hand.kind], "mirrored": hand.mirrored,
                      **hand.result, "pictures": names.get(j, {})})
    item.record = {"image": item.path, "width": item.size[0], "height": item.size[1], "K": item.K,
                   "K_source": item.K_source, "skeleton": names.get("skeleton"), "hands": hands}
    item.image = None
    for hand in item.hands:
        hand.maps = hand.crop_pixels = None


def draw_pictures(item: Item, out: str) -> dict:
    """<stem>_skeleton.png (crop boxes grey, skeletons over the full image), per hand <stem>_hand<j>_3d.png and
    _heatmaps.png (each map scaled to its peak, as tools/evaluate.py's montages); returns their names."""
    import cv2
    import numpy as np

    from layers.hand.debug import draw_skeleton, heatmap_montage
    from layers.hand.rhd.memo import atomic_write_bytes

    def write_png(name, img):
        atomic_write_bytes(os.path.join(out, name), cv2.imencode(".png", img)[1].tobytes())
        return name

    drawn = np.ascontiguousarray(item.image).copy()
    width = max(1, round(min(item.size) / 320))
    for hand in item.hands:
        x1, y1, x2, y2 = hand.crop
        cv2.rectangle(drawn, (x1, y1), (x2, y2), (160, 160, 160), width)
    for hand in item.hands:
        drawn = draw_skeleton(drawn, np.asarray(hand.result["joints_2d_px"]))
    names = {"skeleton": write_png(f"{item.stem}_skeleton.png", drawn)}
    for j, hand in enumerate(item.hands):
        names[j] = {"3d": write_png(f"{item.stem}_hand{j}_3d.png",
                                    plot_3d(hand.result["joints_3d_rel_mm"], f"{item.stem} hand {j}"))}
        if hand.maps is not None:
            peak = np.maximum(hand.maps.reshape(len(hand.maps), -1).max(1), 1e-12)[:, None, None]
            maps = np.clip(np.rint(hand.maps / peak * 255), 0, 255).astype(np.uint8)
            names[j]["heatmaps"] = write_png(f"{item.stem}_hand{j}_heatmaps.png",
                                             heatmap_montage(maps, hand.crop_pixels))
    return names


def plot_3d(joints_rel, title: str):
    """The root-relative 3D skeleton (mm) from the camera (X right, Y up the image) and from the side (depth Z
    to the right, away from the camera), equal axes; 800 x 400 BGR uint8."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from layers.hand.debug import keypoint_color
    from layers.hand.skeleton import BONES
    p = np.asarray(joints_rel, np.float64)
    q = np.stack([p[:, 0], p[:, 2], -p[:, 1]], axis=1)     # plot axes: X, Z (depth), -Y (up)
    color = [tuple(c / 255 for c in reversed(keypoint_color(k))) for k in range(len(p))]
    color[0] = (0.2, 0.2, 0.2)      # the wrist, white on the overlays, dark here
    fig = plt.figure(figsize=(8, 4), dpi=100)
    ok = bool(np.all(np.isfinite(q)))
    span = max(float(np.abs(q).max()) if ok else 1.0, 1.0) * 1.05
    for i, (name, azim) in enumerate((("seen from the camera", -90), ("seen from the side (+X)", 0))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        if ok:
            for a, b in BONES:
                ax.plot(*q[[a, b]].T, color=color[b if a == 0 else a], linewidth=2)
            ax.scatter(*q.T, c=color, s=12, depthshade=False)
        for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            set_lim(-span, span)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=0, azim=azim)
        ax.set_zlabel("-Y (mm)", fontsize=8)
        if i == 0:              # the axis along the line of sight has no ticks
            ax.set_xlabel("X (mm)", fontsize=8)
            ax.set_yticks([])
        else:
            ax.set_ylabel("Z (mm), depth", fontsize=8)
            ax.set_xticks([])
        ax.set_title(f"{title}, {name}" + ("" if ok else " (not finite)"), fontsize=9)
        ax.tick_params(labelsize=6)
    fig.subplots_adjust(left=0, right=1, bottom=0.02, top=0.95, wspace=0.05)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return np.ascontiguousarray(rgba[..., [2, 1, 0]])


def run(args) -> int:
    from layers.hand import evaluation
    from layers.hand.skeleton import KEYPOINT_NAMES
    if args.batch < 1:
        raise NetError(f"--batch must be positive, got {args.batch}")
    items = plan_items(args)
    bones, bones_path = read_bones(args)
    print(f"bone lengths: {bones_path}")
    net, net_path = open_net(args.weights, args.net, args.device, args.dtype)
    try:
        size = net.inputs["image"][2]
        roles = evaluation.find_roles(net)
        heat_blob = roles.get("heatmaps")
        os.makedirs(args.out, exist_ok=True)
        from tqdm import tqdm
        bar = tqdm(total=len(items), desc="predict", unit="img", file=sys.stderr, disable=None)
        pending, rows = [], []

        def flush():     # pictures of the images whose hands are all done, in order
            while pending and all(h.result is not None for h in pending[0].hands):
                finish(pending.pop(0), args.out, args.pictures)
                bar.update(1)
        for item in items:
            rows += prepare(item, size, args.net_hand, "is_left" in net.inputs)
            pending.append(item)
            while len(rows) >= args.batch:
                run_batch(net, rows[:args.batch], bones, heat_blob)
                rows = rows[args.batch:]
            flush()
        if rows:
            run_batch(net, rows, bones, heat_blob)
            flush()
        bar.close()
    finally:
        net.close()
    result = {"net": _shown(net_path), "weights": args.weights, "avg_bone_mm": bones.tolist(),
              "avg_bone_source": bones_path, "net_hand": args.net_hand, "dtype": args.dtype,
              "keypoints": list(KEYPOINT_NAMES),
              "units": {"joints_2d_px": "full-image pixels u, v (pixel (r, c) at u = c, v = r)",
                        "joints_3d_mm": "camera frame X, Y, Z mm", "joints_3d_rel_mm": "minus the wrist (keypoint 0)",
                        "root_depth_mm": "Z of the wrist"},
              "images": [item.record for item in items]}
    from layers.hand.rhd.memo import atomic_write_bytes
    path = os.path.join(args.out, "predictions.json")
    atomic_write_bytes(path, json.dumps(result, indent=1).encode())
    hands = sum(len(item.hands) for item in items)
    clamped = sum(bool(h["root_clamped"]) for item in items for h in item.record["hands"])
    print(f"wrote {path} ({len(items)} image(s), {hands} hand(s)"
          + (f", {clamped} clamped root depth(s)" if clamped else "") + f") and pictures in {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="predict.py", description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    ap.add_argument("--weights", required=True, help="trained weights: HDF5 or binary .caffemodel")
    ap.add_argument("--net", help="deploy net (default: the prototxt/rhd_*_deploy.prototxt the weights fit)")
    ap.add_argument("--box", metavar="x1,y1,x2,y2", help="the hand's box, grown to the converter's square crop")
    ap.add_argument("--crop-box", metavar="x1,y1,x2,y2", help="the crop box, used as is (negative numbers: "
                    "--crop-box=-5,0,60,65)")
    ap.add_argument("--boxes", metavar="FILE.json", help="boxes (and cameras) per image file name")
    ap.add_argument("--K", metavar="fx,fy,cx,cy", help="camera (default: boxes.json's, else %g px x W/320, "
                    "centre)" % DEFAULT_FOCAL_320)
    ap.add_argument("--hand", choices=HANDS, help="the hands' side where boxes.json does not say it")
    ap.add_argument("--net-hand", choices=("both",) + HANDS, default="both",
                    help="the side the net was trained on (default both: tools/make_rhd_nets.py's nets)")
    ap.add_argument("--bones", metavar="avg_bone.txt", help="mean bone lengths, 20 numbers in mm")
    ap.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    ap.add_argument("--batch", type=int, default=16, help="hands per forward pass (default 16)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="run the net in this precision (float64 for exactness checks)")
    ap.add_argument("--no-pictures", dest="pictures", action="store_false",
                    help="write predictions.json alone (no PNGs)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_tool(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
