"""The author's nets read the converted folders this way (strawberryfg/RHDHand RHDLatentHMMap and
RHDLatentHMMapRawPaper): indices drawn over both hands of every image in several ranges, excluding
missing_left_new.txt alone, then read with his readers' `read_path` / `file_prefix` blocks. Whatever an
exclusion list leaves must be a usable sample with all its files, so such a net reads for as long as one lets it.
The net below is his front end with our converted synthetic set's paths (his layer types and param blocks)."""

import numpy as np
import pytest
import torch

from layers.hand.rhd import memo
from nets.net import Net

BATCH = 8


def author_front_end(root: str, which: str, bounds: list[tuple[int, int]]) -> str:
    split = f"{root}/training"
    ranges = "".join(f'''
        layer {{
          name: "image_index_{i}"
          type: "DeepHandModelGenRandIndex"
          top: "image_index_{i}"
          gen_rand_index_param {{
             index_lower_bound: {lb}
             index_upper_bound: {ub}
             batch_size: {BATCH}
             missing_index_file: "{split}/all_hand/missing_{which}_new.txt"
          }}
          include {{ phase: TRAIN }}
        }}''' for i, (lb, ub) in enumerate(bounds))
    bottoms = " ".join(f'bottom: "image_index_{i}"' for i in range(len(bounds)))
    readers = "".join(f'''
        layer {{
          name: "read_{field}"
          type: "ReadBlobFromFileIndexing"
          bottom: "image_index"
          top: "raw_{field}"
          read_blob_from_file_indexing_param {{
             file_prefix: "{split}/all_hand/{field}/"
             num_to_read: {n}
          }}
          include {{ phase: TRAIN }}
        }}''' for field, n in (("image_index", 1), ("bbx_x1", 1), ("bbx_y2", 1), ("crop_gt_2d", 42), ("gt_3d", 63)))
    return f'''
        name: "AuthorFrontEnd"
        {ranges}
        layer {{ name: "image_index_concat" type: "Concat" {bottoms} top: "image_index_concat"
                 include {{ phase: TRAIN }} }}
        layer {{ name: "image_index" type: "CrossValidationRandomChooseIndex" bottom: "image_index_concat"
                 top: "image_index" include {{ phase: TRAIN }} }}
        layer {{
          name: "readimage"
          type: "ReadImage"
          bottom: "image_index"
          top: "image"
          read_image_param {{
             read_path: "{split}/all_hand/crop_image/"
             resize_size: 128
             zero_pad: 0
          }}
          include {{ phase: TRAIN }}
        }}
        layer {{
          name: "avg_bone"
          type: "ReadBlobFromFile"
          top: "avg_bone"
          read_blob_from_file_param {{
             file_path: "{split}/all_hand/avg_bone.txt"
             num_to_read: 20
             batch_size: {BATCH}
          }}
        }}
        {readers}
        layer {{ name: "drawn" type: "Split" bottom: "image_index" top: "drawn_index" include {{ phase: TRAIN }} }}
    '''


@pytest.mark.parametrize("which, parity", [("left", 0), ("right", 1), ("all", None)])
def test_the_authors_draw_over_both_hands_reads_only_usable_samples(rhd_converted, tmp_path, which, parity):
    root, _ = rhd_converted
    n = 2 * 8                                   # the fixture's 8 training images, both hands
    usable = set(memo.read_index_list(memo.index_list_path(root, "training")).tolist())
    assert len(usable) < n                       # the fixture has unusable hands: the lists matter
    path = tmp_path / "front.prototxt"
    # his split of the index range into consecutive blocks, the last one ending at the last sample
    path.write_text(author_front_end(root, which, [(0, 5), (6, 11), (12, n - 1)]))
    net = Net(str(path), phase="TRAIN", workers=0)
    drawn = set()
    for _ in range(30):
        out = net.forward()
        idx = out["drawn_index"].reshape(-1).to(torch.int64).tolist()
        drawn.update(idx)
        assert out["image"].shape == (BATCH, 3, 128, 128)
        assert torch.isfinite(out["raw_gt_3d"]).all()
        # each sample's own files: idx = 2 * image_id + hand
        assert out["raw_image_index"].reshape(-1).tolist() == [i // 2 for i in idx]
    assert drawn <= usable
    if parity is not None:
        assert {i % 2 for i in drawn} == {parity}
        assert drawn == {i for i in usable if i % 2 == parity}   # 240 draws reach every one of them
    else:
        assert drawn == usable
