"""The Solver: Caffe's training loop (solver.cpp Step/Solve/Test, sgd_solver.cpp ApplyUpdate) over the pieces of
this package: params (the solver file), build (its nets and files), lr_policy, rules and update (the update),
state (snapshots and RNG), interrupt (Ctrl-C) and progress (log lines, bar).

Per iteration: test (every test_interval, and at 0 when test_initialization), iter_size forward/backward passes
accumulating gradients (the reported loss is their mean), display, the update, then a snapshot every `snapshot`
iterations. See nets/solver/__init__.py for what differs from Caffe.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque

import torch

from netdef.errors import NetError
from nets import distributed as ddp
from nets.accel import LossScaler, amp_dtype, autocast
from nets.net import Net, default_device
from nets.solver import build
from nets.solver.interrupt import StopRequest
from nets.solver.lr_policy import current_step, learning_rate
from nets.solver.params import NetStateParam, load_solver_param
from nets.solver.progress import Progress, fmt
from nets.solver.rules import UPDATE_RULES
from nets.solver.state import (capture_rng, check_state, rank_seed, read_state, restore_rng, seed_all,
                               write_state)
from nets.solver.update import apply_update
from nets.weights import atomic_h5, load_weights, remove_stale_temp_files, save_weights

__all__ = ["Solver"]


class Solver:
    def __init__(self, solver, device=None, workers: int | None = None, *, stages=(), level: int | None = None,
                 weights=None, seed: int | None = None, amp: str | None = None, channels_last: bool = False,
                 compile: bool = False):
        """`solver`: a solver file, solver text or parsed Message. `stages`/`level` add to train_state (as
        caffe train's --stage/--level). `weights`: files to fine-tune from, replacing the solver's `weights`
        field (None keeps it; [] loads none). `seed` replaces random_seed. `amp`: mixed precision ("auto",
        "bfloat16" or "float16", nets/accel.py); `channels_last`: NHWC memory order for 4-D weights and
        data; `compile`: torch.compile the nets (Net.compile). Inside a torchrun process group of several
        processes the solver trains data-parallel (nets/distributed.py)."""
        self.param = p = load_solver_param(solver)
        if seed is not None:
            p.random_seed = seed
        p.train_state.stages = list(p.train_state.stages) + list(stages)
        if level is not None:
            p.train_state.level = level
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.prefix = build.snapshot_prefix(p)
        if self.prefix is not None and self.rank == 0:
            stale = remove_stale_temp_files(self.prefix)
            if stale:
                print(f"note: removed {len(stale)} temporary file(s) of a snapshot that was killed while being "
                      f"written: {', '.join(stale)}", file=sys.stderr, flush=True)
        self.device = default_device(device)
        self.progress = Progress(self.rank)
        self.stop = StopRequest(self.rank, self.world)
        seed_ = p.random_seed
        if seed_ < 0 and self.world > 1:
            # the ranks' index layers must draw alike (they shard one global batch): one seed for all
            seed_ = ddp.broadcast_object(int(torch.randint(0, 2 ** 31 - 1, ()).item()))
        if seed_ >= 0:   # before the nets: fillers and the index layers' RNGs derive from it
            seed_all(seed_)
        self._seed = max(seed_, 0)
        self.train_net = self._make_net(*build.train_net_definition(p), p.train_state, "TRAIN", workers)
        self.test_nets: list[Net] = []
        for i, (definition, field_name) in enumerate(build.test_net_definitions(p)):
            state = p.test_state[i] if p.test_state else NetStateParam()
            net = self._make_net(definition, field_name, state, "TEST", workers)
            build.share_trained_layers(net, self.train_net)
            self.test_nets.append(net)
        if self.world > 1:
            if self.train_net.source is not None:
                self.train_net.source.shard(self.rank, self.world)
            if self.rank > 0:   # different Dropout masks on each rank's samples, as in one big batch
                seed_all(rank_seed(seed_, self.rank))
        self.amp_dtype = amp_dtype(self.device, amp)
        self.scaler = LossScaler() if self.amp_dtype == torch.float16 else None
        for net in self._nets():
            if channels_last:
                net.use_channels_last()
            if compile:
                net.compile()
        self.rule = UPDATE_RULES[p.type](p)
        self.params = list(self.train_net.param_info)
        self._replica = build.wrap_data_parallel(self.train_net, self.params, self.device, self.world)
        self.history = [torch.zeros_like(pi.tensor) for _ in range(self.rule.n_history) for pi in self.params]
        self.iter = 0
        self.losses: deque = deque(maxlen=p.average_loss)   # the smoothed-loss window
        self.interrupted = False
        self.last_snapshot: str | None = None     # solver state file of the last snapshot
        self._snapshot_iter: int | None = None
        self._loss_weights = {t: w for st in self.train_net.plan for t, w in zip(st.tops, st.loss_weights)}
        for path in (p.weights if weights is None else ([weights] if isinstance(weights, str) else weights)):
            for name in str(path).split(","):
                if name.strip():
                    self.load_weights(name.strip(), from_solver=weights is None)

    def _make_net(self, definition, field_name: str, state: NetStateParam, phase: str, workers) -> Net:
        return build.make_net(self.param, definition, field_name, state, phase, self.device, workers)

    def _nets(self) -> list[Net]:
        return [self.train_net] + self.test_nets

    def load_weights(self, path: str, from_solver: bool = False) -> None:
        """Fine-tune from an HDF5 weights file (into the train net and the test nets' own layers)."""
        if from_solver:
            path = build.resolve_file(self.param, "weights", path)
        self._log(f"Finetuning from {path}")
        report = load_weights(self.train_net, path)
        for net in self.test_nets:
            load_weights(net, path)
        if self.rank == 0:
            print(f"note: {report}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the nets' data worker processes."""
        for net in self._nets():
            net.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _log(self, line: str) -> None:
        self.progress.log(line)

    def lr(self) -> float:
        """The learning rate of the current iteration."""
        return learning_rate(self.param, self.iter)

    # -- running the nets ---------------------------------------------------------------------------------------
    def _forward(self, net: Net, module=None) -> dict[str, torch.Tensor]:
        """One forward pass (through `module`, the data-parallel replica, when given); the net draws its data."""
        with autocast(self.device, self.amp_dtype):
            return (module or net)()

    def _train_iteration(self) -> tuple[float, dict]:
        net = self.train_net
        net.zero_grad(set_to_none=True)
        total = 0.0
        outputs = {}
        n = self.param.iter_size
        for k in range(n):
            # gradients are averaged over the ranks once, after the last of the iter_size passes
            sync = self._replica.no_sync() if self._replica is not None and k < n - 1 else contextlib.nullcontext()
            with sync:
                outputs = self._forward(net, self._replica)
                if net.loss is not None:
                    if net.loss.requires_grad:
                        (net.loss * self.scaler.scale if self.scaler else net.loss).backward()
                    total += net.loss.item()
        return total / n, outputs

    def _agree(self, loss: float) -> float:
        """The loss averaged over the ranks, and the ranks' stop requests (Ctrl-C) merged, in one collective:
        every rank must stop after the same iteration."""
        if self.world <= 1:
            return loss
        both = ddp.all_reduce_mean(torch.tensor([loss, float(self.stop.requested)], dtype=torch.float64,
                                                device=self.device))
        self.stop.agreed = bool(both[1].item() > 0)
        return float(both[0].item())

    def _agree_stop(self) -> bool:
        self._agree(0.0)
        return self.stop.stopping()

    def _smoothed(self, loss: float) -> float:
        self.losses.append(loss)
        return sum(self.losses) / len(self.losses)

    def _mean_outputs(self, outputs: dict) -> dict[str, list[float]]:
        """Each output's values, averaged over the ranks."""
        names = list(outputs)
        flat = [outputs[k].detach().double().flatten() for k in names]
        if self.world > 1 and flat:
            joined = ddp.all_reduce_mean(torch.cat(flat).to(self.device))
            flat = list(joined.split([len(f) for f in flat]))
        return {k: f.tolist() for k, f in zip(names, flat)}

    def _apply_update(self) -> None:
        p = self.param
        rate = self.lr()
        if p.lr_policy == "multistep" and current_step(p, self.iter) != current_step(p, self.iter - 1):
            self._log(f"MultiStep Status: Iteration {self.iter}, step = {current_step(p, self.iter)}")
        if p.display and self.iter % p.display == 0:
            self._log(f"Iteration {self.iter}, lr = {fmt(rate)}")
        grads = [pi.tensor.grad for pi in self.params]    # None: no gradient reached it (zero in Caffe)
        if self.scaler is not None:
            finite = self.scaler.unscale(grads)
            self.scaler.update(finite)
            if not finite:
                self._log(f"Mixed precision: gradients overflowed at iteration {self.iter}, update skipped; "
                          f"loss scale now {fmt(self.scaler.scale)}")
                self.iter += 1
                return
        apply_update(self.params, grads, self.history, self.rule, p, rate, self.iter, self._log)
        self.iter += 1

    # -- the loop -------------------------------------------------------------------------------------------------
    def step(self, iters: int) -> list[float]:
        """Run `iters` training iterations (Caffe's Solver::Step). Returns each iteration's loss."""
        p = self.param
        stop = self.iter + iters
        out = []
        self.progress.start_timer(self.iter)
        with self.stop.guard(), self.progress.bar(stop, self.iter):
            while self.iter < stop:
                if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                    before = self._capture()
                    self.test_all()
                    if self._agree_stop():
                        self._stop_snapshot(before)
                        break
                display = p.display and self.iter % p.display == 0
                loss, outputs = self._train_iteration()
                loss = self._agree(loss)
                smoothed = self._smoothed(loss)
                if display:
                    speed = self.progress.speed(self.iter, p.display)
                    self._log(f"Iteration {self.iter} {speed}, loss = {fmt(smoothed)}")
                    values = self._mean_outputs(outputs)
                    self.progress.output_lines("Train", self.train_net.outputs, values, self._loss_weights)
                self._apply_update()
                out.append(loss)
                self.progress.advance()
                if p.snapshot and self.iter % p.snapshot == 0:
                    self.snapshot()
                if self.stop.stopping():
                    self._stop_snapshot()
                    break
        return out

    def solve(self, resume: str | None = None) -> list[float]:
        """Train to max_iter (Caffe's Solver::Solve), optionally resuming from a solver state file. Returns the
        losses of the iterations run."""
        with self.stop.guard():
            return self._solve(resume)

    def _solve(self, resume: str | None) -> list[float]:
        p = self.param
        self._log(f"Solving {self.train_net.name}")
        self._log(f"Learning Rate Policy: {p.lr_policy}")
        if resume is not None:
            self._log(f"Restoring previous solver status from {resume}")
            self.restore(resume)
        self.interrupted = False
        losses = self.step(p.max_iter - self.iter)
        if self.interrupted:
            self._log("Optimization stopped early.")
            return losses
        if p.snapshot_after_train and self._snapshot_iter != self.iter:
            self.snapshot()
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                self._forward(self.train_net)
            loss = self.train_net.loss.item() if self.train_net.loss is not None else 0.0
            self._log(f"Iteration {self.iter}, loss = {fmt(self._smoothed(self._agree(loss)))}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self._log("Optimization Done.")
        return losses

    def test_all(self) -> None:
        """Run every test net (rank 0 only when training data-parallel, as Caffe's root solver)."""
        if self.rank != 0:
            return
        for i in range(len(self.test_nets)):
            if self.stop.requested:
                break
            self.test(i)

    def test(self, k: int) -> None:
        """Run test net k for test_iter[k] passes; print each output element's mean (Caffe's Solver::Test)."""
        p = self.param
        net = self.test_nets[k]
        self._log(f"Iteration {self.iter}, Testing net (#{k})")
        sums: dict[str, torch.Tensor] = {}
        loss = 0.0
        n = p.test_iter[k]
        with torch.no_grad():
            for _ in range(n):
                if self.stop.requested:
                    self._log("Test interrupted.")
                    return
                outputs = self._forward(net)
                if p.test_compute_loss and net.loss is not None:
                    loss += net.loss.item()
                for name, value in outputs.items():
                    v = value.detach().double().flatten()
                    sums[name] = sums[name] + v if name in sums else v
        if p.test_compute_loss:
            self._log(f"Test loss: {fmt(loss / n)}")
        weights = {t: w for st in net.plan for t, w in zip(st.tops, st.loss_weights)}
        means = {name: (s / n).tolist() for name, s in sums.items()}
        self.progress.output_lines("Test", net.outputs, means, weights)

    # -- snapshots ------------------------------------------------------------------------------------------------
    def _capture(self) -> dict:
        return capture_rng(self.device, self._nets())

    def _stop_snapshot(self, states: dict | None = None) -> None:
        self.interrupted = True
        if self.prefix is None:
            self._log("No snapshot_prefix: nothing was saved.")
        elif self._snapshot_iter != self.iter:
            self.snapshot(states)
        if states is not None:    # continue in-process exactly as a resume from that snapshot would
            restore_rng(states, self.device, self._nets(), self.scaler)

    def snapshot(self, states: dict | None = None) -> str:
        """Write <prefix>_iter_N.caffemodel.h5 and <prefix>_iter_N.solverstate.h5; returns the state path.
        Each is written to a temporary file in the same folder and renamed, so an interruption leaves the
        last complete snapshot intact."""
        if self.prefix is None:
            raise NetError(f"{self.param.filename}: no snapshot_prefix, cannot snapshot")
        states = dict(states or self._capture())
        # data-parallel: every rank's Dropout RNG (rank 0 writes; a resume under the same N restores them all)
        states["ranks"] = ddp.all_gather_object({k: states[k] for k in ("torch_cpu", "torch_cuda")})
        model = f"{self.prefix}_iter_{self.iter}.caffemodel.h5"
        path = f"{self.prefix}_iter_{self.iter}.solverstate.h5"
        if self.rank == 0:
            self._log(f"Snapshotting to HDF5 file {model}")
            save_weights(self.train_net, model)
            self._log(f"Snapshotting solver state to HDF5 file {path}")
            p = self.param
            atomic_h5(path, lambda f: write_state(
                f, solver_type=p.type, iteration=self.iter, current_step=current_step(p, self.iter),
                learned_net=os.path.basename(model), history=self.history, loss_window=self.losses,
                average_loss=p.average_loss, states=states, scaler=self.scaler), "solver state")
        self._snapshot_iter = self.iter
        self.last_snapshot = path
        return path

    def restore(self, path) -> None:
        """Load a solver state (and the weights file it names, relative to its folder). Everything is checked
        before anything changes; a bad file is refused with a NetError."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise NetError(f"cannot restore solver state '{path}': no such file")
        try:
            saved = read_state(path)
            check_state(saved, solver_type=self.param.type, params=self.params, history=self.history,
                        n_history=self.rule.n_history, nets=self._nets())
        except NetError as e:
            raise NetError(f"cannot restore solver state '{path}': {e}") from None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise NetError(f"cannot restore solver state '{path}': {detail}") from None
        weights = saved.learned_net
        weights = weights if os.path.isabs(weights) else os.path.join(os.path.dirname(os.path.abspath(path)), weights)
        try:
            load_weights(self.train_net, weights, strict=True)
        except NetError as e:
            raise NetError(f"cannot restore solver state '{path}': {e}") from None
        with torch.no_grad():
            for h, value in zip(self.history, saved.history):
                h.copy_(torch.from_numpy(value).to(h.dtype))
        self.iter = saved.iter
        self.losses = deque(saved.loss_window[-self.param.average_loss:], maxlen=self.param.average_loss)
        restore_rng(saved.rng_states(self.rank, self.world, self._seed), self.device, self._nets(), self.scaler)
        self._snapshot_iter = saved.iter
        self.last_snapshot = path
