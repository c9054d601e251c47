"""The RHD hand: 21 keypoints, 20 bones, root and reference bone (SPEC section 1). No torch."""

from __future__ import annotations

NUM_JOINTS = 21
NUM_BONES = 20
ROOT = 0              # wrist
REF_BONE = (8, 0)     # (n, m): index MCP - wrist; its length is the hand scale s
FINGERS = ("thumb", "index", "middle", "ring", "little")

# 0 wrist; per finger f (base b = 1 + 4f): tip, DIP, PIP, MCP  (so 4, 8, 12, 16, 20 are the MCPs)
KEYPOINT_NAMES = ("wrist",) + tuple(f"{f}_{part}" for f in FINGERS for part in ("tip", "dip", "pip", "mcp"))

# per finger: (tip, DIP), (DIP, PIP), (PIP, MCP), (MCP, wrist)
BONES = tuple(pair for f in range(5) for b in (1 + 4 * f,)
              for pair in ((b, b + 1), (b + 1, b + 2), (b + 2, b + 3), (b + 3, ROOT)))


def finger_of(keypoint: int) -> int:
    """Finger number 0-4 of a keypoint, -1 for the wrist."""
    return -1 if keypoint == ROOT else (keypoint - 1) // 4
