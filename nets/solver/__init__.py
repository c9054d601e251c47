"""The solver: training like `caffe train`, configured by a Caffe SolverParameter prototxt.

    solver = Solver("solver.prototxt", device="cpu")
    solver.solve()                               # or solver.solve(resume="snap_iter_1000.solverstate.h5")
    solver.step(10); solver.snapshot(); solver.restore(path); solver.lr(); solver.iter
    solver.train_net, solver.test_nets           # the test nets share the train net's tensors

The package follows Caffe's split (solver.cpp, sgd_solver.cpp, solvers/*.cpp):
    params.py     the solver file (SolverParameter) parsed with the shared schema and checked
    build.py      its files, nets and snapshot prefix; test nets sharing the train net's tensors; DDP wrap
    lr_policy.py  learning-rate policies (pure functions)
    rules/        one file per update rule (pure functions); update.py: clipping, decay, the update
    state.py      RNG states and the .solverstate.h5 file (write; read, then check)
    interrupt.py  Ctrl-C; progress.py: log lines and the progress bar
    solver.py     the Solver: the loop (Step, Solve, Test), snapshot and restore

Semantics follow BVLC Caffe: per iteration, test (every test_interval, and at 0 when test_initialization),
iter_size forward/backward passes accumulating gradients (the reported loss is their mean), display, then
ApplyUpdate (update.py), then snapshot every `snapshot` iterations. Snapshots are <prefix>_iter_N.caffemodel.h5
(nets.weights layout) then <prefix>_iter_N.solverstate.h5 (state.py), each written to a temporary file and
renamed. Resuming from a snapshot on the CPU continues exactly as the uninterrupted run would have.

Data-parallel (inside a torchrun process group, nets/distributed.py): the train net runs in
DistributedDataParallel, gradients are averaged over the ranks after the last iter_size pass, the reported
loss and outputs are the ranks' means, rank 0 alone logs, tests and writes snapshots, and a Ctrl-C stops
every rank after the same iteration. Speed options (nets/accel.py): amp runs forward passes under autocast
(float16 with dynamic loss scaling: an overflowing iteration is skipped), channels_last, compile.

Where this differs from Caffe:
- The learning rate is computed in double precision (Caffe: the net's Dtype).
- The smoothed-loss window is solver state (kept across step() calls and in snapshots), so a resumed run
  prints the same smoothed losses; Caffe restarts it at each Step() and at a resume.
- Params with lr_mult 0 are skipped: their weights are unchanged, as in Caffe, and their history stays zero.
- Non-learnable blobs (BatchNorm's statistics) are buffers here, so they have no history entries.
- snapshot_format defaults to HDF5; BINARYPROTO is refused. solver_mode/device_id are ignored (the device
  comes from the caller), as are debug_info, snapshot_diff and layer_wise_reduce.
- Ctrl-C (SIGINT) always snapshots: the current iteration finishes, a snapshot is written and training
  stops (`interrupted` is set); a second Ctrl-C raises KeyboardInterrupt at once. Ctrl-C during a test pass
  abandons the test and snapshots the state from before it, so a resume reruns that test exactly.
- poly: past max_iter the rate is 0 (Caffe would raise a negative number to `power`).
"""

from nets.solver.build import blobs_reaching_loss
from nets.solver.lr_policy import current_step, learning_rate
from nets.solver.params import SolverParam, load_solver_param
from nets.solver.rules import UPDATE_RULES
from nets.solver.solver import Solver
from nets.solver.state import STATE_VERSION

__all__ = ["Solver", "SolverParam", "load_solver_param", "learning_rate", "current_step", "UPDATE_RULES",
           "STATE_VERSION", "blobs_reaching_loss"]
