"""Reading our training logs in tests: the messages without glog's header, and with `keep_speed=False` without
the speed part of display lines ("Iteration 4 (9.7 iter/s, 0.2s/2 iters), loss = " -> "Iteration 4, loss = "), so
two runs' logs compare equal line for line."""

import re

from nets.solver.progress import strip_header

SPEED = re.compile(r"^Iteration (\d+) \(\S+ iter/s, \S+s/\d+ iters\), loss = ")


def messages(text: str, keep_speed: bool = False) -> list[str]:
    lines = [strip_header(line) for line in text.splitlines()]
    return lines if keep_speed else [SPEED.sub(r"Iteration \1, loss = ", line) for line in lines]
