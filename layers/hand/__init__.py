"""The hand-pose pipeline: the memo's steps as layers, and the RHD data code (layers/hand/rhd/)."""
from layers.hand import ground_truth  # noqa: F401,E402  (steps 8-11: scale, depth, heatmaps, depth maps)
from layers.hand import index  # noqa: F401,E402  (step 1: index generators)
from layers.hand import readers  # noqa: F401,E402  (steps 2-7: readers of the memo layout)
from layers.hand import latent  # noqa: F401,E402  (steps 13-15: soft-argmax, latent depth)
from layers.hand import reconstruct  # noqa: F401,E402  (steps 16-19: image coordinates, root depth, scale, 3D)
from layers.hand import metrics  # noqa: F401,E402  (SPEC section 5: EPE, PCK, AUC)
from layers.hand import debug  # noqa: F401,E402  (the memo's debugging output: heatmap images, skeletons)
from layers.hand import losses  # noqa: F401,E402  (L1Loss: the latent 2.5D training loss)
