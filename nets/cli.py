"""run-net: build a net from its prototxt and run it, like `caffe test` (default) or `caffe time` (--time),
or train with a solver, like `caffe train` (--solver).

    python tools/run_net.py NET.prototxt [--phase TRAIN|TEST] [--stage S] [--level N] [--iterations N]
                            [--weights W.h5] [--device cpu|cuda] [--import MODULE_OR_FILE] [--time] [--seed N]
                            [--workers N] [--amp [bfloat16|float16]] [--channels-last] [--compile]
    python tools/run_net.py --solver SOLVER.prototxt [--snapshot STATE.solverstate.h5 | --weights W.h5]
                            [--stage S] [--level N] [--device cpu|cuda] [--import MODULE_OR_FILE]
                            [--seed N] [--workers N] [--amp [bfloat16|float16]] [--channels-last] [--compile]
    torchrun --nproc_per_node=N tools/run_net.py --solver SOLVER.prototxt ...    # data-parallel training

Test mode runs N forward passes and prints each output blob's mean over them (`name = value`; a tensor
output is averaged over its elements), then the weighted loss (`Loss: value`, as caffe test prints it) when the net has one.
Time mode runs one warm-up then N forward+backward passes and prints per-layer and total times.
Input blobs are filled with seeded random normal data of their declared shapes.
Solver mode trains (nets/solver/): Caffe's log lines on stdout, snapshots every `snapshot` iterations and at
the end; --snapshot resumes from a solver state, --weights fine-tunes (comma-separated files allowed),
--stage/--level go to the train net's state, --seed replaces random_seed. Ctrl-C finishes the iteration,
writes a snapshot and exits with status 130; a second Ctrl-C aborts at once. SIGTERM (schedulers, torchrun)
does the same and exits with 143.
Started by torchrun with several processes, --solver trains data-parallel (nets/distributed.py: gloo on the
CPU, NCCL on CUDA with one GPU per process; rank 0 logs and snapshots; the global batch is N times the net's).
--amp runs forward passes in mixed precision (bfloat16 by default, float16 with loss scaling when training),
--channels-last stores 4-D weights and data in NHWC order, --compile runs the nets through torch.compile
(nets/accel.py, Net.compile).

Results go to stdout; notes, the progress bar (only on a terminal) and errors go to stderr. A user error
(NetError) prints one line, `error: <message>`, and exits with status 2; Ctrl-C in test or time mode prints one
line and exits 130, SIGTERM prints `error: terminated by SIGTERM` and exits 143 (netdef.errors.run_tool; data
workers ignore both and stop with the run). --debug also prints the traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback

import torch

from layers.base import as_tuple, check_allocation
from layers.registry import import_user_module
from nets.accel import amp_dtype, autocast
from netdef.errors import add_debug_flag, interruption, run_tool
from nets.net import Net
from nets.weights import load_weights

__all__ = ["main"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return n


def _device(text: str) -> str:
    """Syntax only; whether the device exists is the Net's check (a one-line error, exit 2)."""
    try:
        dev = torch.device(text)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device '{text}' (use cpu, cuda or cuda:N)")
    return text


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="run_net.py",
        description="Build a net from a prototxt and run it like `caffe test`, or time it like `caffe time`; "
                    "or train with --solver like `caffe train`.")
    ap.add_argument("net", nargs="?", help="net definition (.prototxt); not with --solver")
    ap.add_argument("--solver", metavar="SOLVER.prototxt", help="train with this solver, like `caffe train`")
    ap.add_argument("--snapshot", metavar="STATE.solverstate.h5",
                    help="with --solver: resume training from this solver state")
    ap.add_argument("--phase", choices=("TRAIN", "TEST"),
                    help="net phase (default: TEST; TRAIN with --time, as `caffe time`)")
    ap.add_argument("--stage", action="append", default=[], metavar="S",
                    help="net stage for include/exclude rules (repeatable, or comma-separated)")
    ap.add_argument("--level", type=int, default=0, help="net level for include/exclude rules (default 0)")
    ap.add_argument("--iterations", type=positive_int, metavar="N", help="passes to run (default 50)")
    ap.add_argument("--weights", metavar="W.h5", help="weights to load: HDF5 (Caffe's layout) or binary .caffemodel")
    ap.add_argument("--device", type=_device, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                    help="import a module or .py file that registers layers (repeatable)")
    ap.add_argument("--time", action="store_true", help="time forward and backward per layer")
    ap.add_argument("--seed", type=int, help="random seed (default 0; with --solver: the solver's random_seed)")
    ap.add_argument("--workers", type=int, default=None, metavar="N",
                    help="processes reading data ahead of the net (default: min(2, cores); 0 reads inline)")
    ap.add_argument("--amp", nargs="?", const="auto", choices=("auto", "bfloat16", "float16"),
                    help="mixed precision: convolutions and products in 16 bits (default type: bfloat16 where "
                         "the device supports it, else float16)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory order for 4-D weights and data")
    ap.add_argument("--compile", action="store_true", help="run the nets through torch.compile")
    add_debug_flag(ap)
    return ap


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.solver:
        bad = [flag for flag, given in (("NET", args.net), ("--phase", args.phase), ("--time", args.time),
                                         ("--iterations", args.iterations)) if given]
        if bad:
            parser.error(f"{bad[0]} cannot be used with --solver (the solver file names the nets and max_iter)")
        if args.snapshot and args.weights:
            parser.error("give --snapshot to resume or --weights to fine-tune, not both")
    elif args.net is None:
        parser.error("a net definition (NET.prototxt) or --solver is required")
    elif args.snapshot:
        parser.error("--snapshot needs --solver")
    return run_tool(lambda: _train(args) if args.solver else _run(args), args.debug)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _stages(args) -> list[str]:
    return [s for arg in args.stage for s in arg.split(",") if s]


def _train(args) -> int:
    from nets import distributed
    from nets.solver import Solver
    for module in args.imports:
        import_user_module(module)
    weights = [] if args.snapshot else ([args.weights] if args.weights else None)
    solver = None
    completed = False
    try:
        device = distributed.init_from_env(args.device)
        solver = Solver(args.solver, device=device, workers=args.workers, stages=_stages(args),
                        level=args.level or None, weights=weights, seed=args.seed, amp=args.amp,
                        channels_last=args.channels_last, compile=args.compile)
        solver.solve(resume=args.snapshot)
        completed = not solver.interrupted
    except KeyboardInterrupt as e:
        if args.debug:
            traceback.print_exc()
        name, status = interruption(e)     # Ctrl-C 130, SIGTERM 143
        where = f" at iteration {solver.iter}" if solver else " before training started"
        last = (f"the last complete snapshot is {solver.last_snapshot}" if solver and solver.last_snapshot
                else "no snapshot was written")
        print(f"error: aborted by {name}{where}; {last}", file=sys.stderr)
        return status
    finally:
        if solver is not None:
            solver.close()
        distributed.shutdown(completed)
    status = 128 + (solver.stop.signal or signal.SIGINT) if solver.interrupted else 0   # 130 Ctrl-C, 143 SIGTERM
    if solver.rank != 0 or not solver.interrupted:
        return status
    if solver.last_snapshot:
        print(f"interrupted at iteration {solver.iter}: snapshot written; resume with "
              f"--solver {args.solver} --snapshot {solver.last_snapshot}", file=sys.stderr)
    else:
        print(f"interrupted at iteration {solver.iter}: no snapshot_prefix, nothing was saved", file=sys.stderr)
    return status


def _run(args) -> int:
    torch.manual_seed(0 if args.seed is None else args.seed)
    for module in args.imports:
        import_user_module(module)
    stages = _stages(args)
    phase = args.phase or ("TRAIN" if args.time else "TEST")
    net = Net(args.net, phase=phase, stages=stages, level=args.level, device=args.device, workers=args.workers)
    if args.weights:
        _note(str(load_weights(net, args.weights)))
    inputs = {}
    for name, shape in net.inputs.items():
        if net.device.type == "cpu":
            check_allocation(shape, torch.get_default_dtype().itemsize, f"input '{name}'")
        inputs[name] = torch.randn(shape, device=net.device)
        _note(f"input '{name}' {shape} filled with random normal data")
    if args.channels_last:
        net.use_channels_last()
    if args.compile:
        net.compile()
    try:
        iterations = 50 if args.iterations is None else args.iterations
        with autocast(net.device, amp_dtype(net.device, args.amp)):
            if args.time:
                _time(net, inputs, iterations)
            else:
                _test(net, inputs, iterations)
    finally:
        net.close()
    return 0


def _progress(n: int, desc: str):
    from tqdm import tqdm
    return tqdm(range(n), desc=desc, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


# -- test ---------------------------------------------------------------------------------------------------

def _test(net, inputs: dict, n: int) -> None:
    weight = {t: w for step in net.plan for t, w in zip(step.tops, step.loss_weights)}
    means = dict.fromkeys(net.outputs, 0.0)
    sums = dict.fromkeys(net.outputs, 0.0)      # loss contribution of weighted outputs is w * sum
    loss = None
    with torch.no_grad():
        for _ in _progress(n, "test"):
            outputs = net.forward(**inputs)
            for name, value in outputs.items():
                value = value.double()
                means[name] += value.mean().item()
                if weight.get(name):
                    sums[name] += value.sum().item()
            if net.loss is not None:
                loss = (loss or 0.0) + net.loss.item()
    for name in net.outputs:
        line = f"{name} = {means[name] / n:.6g}"
        if weight.get(name):
            line += f" (* {weight[name]:g} = {weight[name] * sums[name] / n:.6g} loss)"
        print(line)
    if loss is not None:
        print(f"Loss: {loss / n:.6g}")


# -- time ---------------------------------------------------------------------------------------------------

def _backward_target(net, outputs: dict):
    """What the net's backward starts from: its loss, else the sum of its output means."""
    if net.loss is not None:
        return net.loss if net.loss.requires_grad else None
    means = [v.mean() for v in outputs.values() if v.requires_grad]
    return sum(means) if means else None


def _time(net, inputs: dict, n: int) -> None:
    cuda = net.device.type == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(net.device)
        return time.perf_counter()

    # Warm-up pass; hooks keep each layer's bottoms as it received them (after propagate_down detaches).
    captured: dict[str, tuple] = {}

    def keep(key):
        def hook(module, args):
            captured[key] = tuple((a.detach(), a.requires_grad) for a in args)
        return hook

    hooks = [net.layers[s.key].register_forward_pre_hook(keep(s.key)) for s in net.plan]
    outputs = net.forward(_timings={}, **inputs)   # layer by layer: every layer's hook fires (no fused steps)
    for h in hooks:
        h.remove()
    target = _backward_target(net, outputs)
    if target is not None:
        target.backward()
    else:
        _note("no output of the net needs a gradient; the backward pass is empty")

    layer_fwd: dict[str, float] = {}
    fwd = bwd = total = 0.0
    for _ in _progress(n, "time"):
        net.zero_grad(set_to_none=True)
        t0 = now()
        outputs = net.forward(_timings=layer_fwd, **inputs)
        target = _backward_target(net, outputs)
        t1 = now()
        if target is not None:
            target.backward()
        t2 = now()
        fwd, bwd, total = fwd + t1 - t0, bwd + t2 - t1, total + t2 - t0
    # source layers ran ahead in the source stage (no hook fired): nothing to differentiate
    layer_bwd = {s.key: _layer_backward(net.layers[s.key], captured[s.key], n, now) if s.key in captured else 0.0
                 for s in net.plan}
    net.zero_grad(set_to_none=True)

    ms = 1000.0 / n
    print("Average time per layer:")
    for s in net.plan:
        print(f"{s.name}\tforward: {layer_fwd.get(s.key, 0.0) * ms:.3f} ms.")   # source layers: see forward()
        print(f"{s.name}\tbackward: {layer_bwd[s.key] * ms:.3f} ms.")
    print(f"Average Forward pass: {fwd * ms:.3f} ms.")
    print(f"Average Backward pass: {bwd * ms:.3f} ms.")
    print(f"Average Forward-Backward: {total * ms:.3f} ms.")
    print(f"Total Time: {total * 1000.0:.3f} ms.")


def _layer_backward(layer, bottoms: tuple, n: int, now) -> float:
    """Seconds for n backward passes of one layer alone, rerun on copies of its bottoms (one warm-up)."""
    total = 0.0
    for it in range(n + 1):
        xs = [x.clone().requires_grad_(grad) for x, grad in bottoms]
        tops = [t for t in as_tuple(layer(*xs)) if t.requires_grad]
        if not tops:
            return 0.0
        grads = [torch.ones_like(t) for t in tops]
        layer.zero_grad(set_to_none=True)
        t0 = now()
        torch.autograd.backward(tops, grad_tensors=grads)
        if it:
            total += now() - t0
    return total
