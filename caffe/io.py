"""pycaffe's caffe.io: load_image, resize_image, oversample and the Transformer, ported line for line from
BVLC Caffe's python/caffe/io.py. Caffe reads images with scikit-image and resizes with skimage.transform.resize
(order 1: bilinear) or scipy.ndimage.zoom; here Pillow reads them and the resizes are NumPy ports of those
functions' arithmetic (pixel centres aligned, `mode='constant'` edges for skimage, zoom's corner-aligned grid),
so neither package is needed. The BlobProto and Datum converters are not ported (no protobuf here)."""

from __future__ import annotations

import numpy as np

__all__ = ["load_image", "resize_image", "oversample", "Transformer"]


## Pre-processing

class Transformer:
    """
    Transform input for feeding into a Net.

    Note: this is mostly for illustrative purposes and it is likely better
    to define your own input preprocessing routine for your needs.

    Parameters
    ----------
    net : a Net for which the input should be prepared
    """
    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception('{} is not one of the net inputs: {}'.format(
                in_, self.inputs))

    def preprocess(self, in_, data):
        """
        Format input for Caffe:
        - convert to single
        - resize to input dimensions (preserving number of channels)
        - transpose dimensions to K x H x W
        - reorder channels (for instance color to BGR)
        - scale raw input (e.g. from [0, 1] to [0, 255] for ImageNet models)
        - subtract mean
        - scale feature

        Parameters
        ----------
        in_ : name of input blob to preprocess for
        data : (H' x W' x K) ndarray

        Returns
        -------
        caffe_in : (K x H x W) ndarray for input to a Net
        """
        self.__check_input(in_)
        caffe_in = data.astype(np.float32, copy=False)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = tuple(self.inputs[in_][2:])
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[channel_swap, :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        """
        Invert Caffe formatting; see preprocess().
        """
        self.__check_input(in_)
        decaf_in = data.copy().squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """
        Set the order of dimensions, e.g. to convert OpenCV's HxWxC images
        into CxHxW.

        Parameters
        ----------
        in_ : which input to assign this dimension order
        order : the order to transpose the dimensions
            for example (2,0,1) changes HxWxC into CxHxW and (1,2,0) reverts
        """
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception('Transpose order needs to have the same number of '
                            'dimensions as the input.')
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """
        Set the input channel order for e.g. RGB to BGR conversion
        as needed for the reference ImageNet model.
        N.B. this assumes the channels are the first dimension AFTER transpose.

        Parameters
        ----------
        in_ : which input to assign this channel order
        order : the order to take the channels.
            (2,1,0) maps RGB to BGR for example.
        """
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception('Channel swap needs to have the same number of '
                            'dimensions as the input channels.')
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """
        Set the scale of raw features s.t. the input blob = input * scale.
        While Python represents images in [0, 1], certain Caffe models
        like CaffeNet and AlexNet represent images in [0, 255] so the raw_scale
        of these models must be 255.

        Parameters
        ----------
        in_ : which input to assign this scale factor
        scale : scale coefficient
        """
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """
        Set the mean to subtract for centering the data.

        Parameters
        ----------
        in_ : which input to assign this mean.
        mean : mean ndarray (input dimensional or broadcastable)
        """
        self.__check_input(in_)
        ms = mean.shape
        if mean.ndim == 1:
            # broadcast channels
            if ms[0] != self.inputs[in_][1]:
                raise ValueError('Mean channels incompatible with input.')
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            # elementwise mean
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError('Mean shape invalid')
            if ms != tuple(self.inputs[in_][1:]):
                in_shape = self.inputs[in_][1:]
                m_min, m_max = mean.min(), mean.max()
                normal_mean = (mean - m_min) / (m_max - m_min)
                mean = resize_image(normal_mean.transpose((1, 2, 0)),
                                    in_shape[1:]).transpose((2, 0, 1)) * \
                    (m_max - m_min) + m_min
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """
        Set the scale of preprocessed inputs s.t. the blob = blob * scale.
        N.B. input_scale is done AFTER mean subtraction and other preprocessing
        while raw_scale is done BEFORE.

        Parameters
        ----------
        in_ : which input to assign this scale factor
        scale : scale coefficient
        """
        self.__check_input(in_)
        self.input_scale[in_] = scale


## Image IO

def load_image(filename, color=True):
    """
    Load an image converting from grayscale or alpha as needed.

    Parameters
    ----------
    filename : string
    color : boolean
        flag for color format. True (default) loads as RGB while False
        loads as intensity (if image is already grayscale).

    Returns
    -------
    image : an image with type np.float32 in range [0, 1]
        of size (H x W x 3) in RGB or
        of size (H x W x 1) in grayscale.
    """
    img = _img_as_float(_imread(filename, as_gray=not color)).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def resize_image(im, new_dims, interp_order=1):
    """
    Resize an image array with interpolation.

    Parameters
    ----------
    im : (H x W x K) ndarray
    new_dims : (height, width) tuple of new dimensions.
    interp_order : interpolation order, default is linear.

    Returns
    -------
    im : resized ndarray with shape (new_dims[0], new_dims[1], K)
    """
    if im.shape[-1] == 1 or im.shape[-1] == 3:
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            # skimage is fast but only understands {1,3} channel images
            # in [0, 1].
            im_std = (im - im_min) / (im_max - im_min)
            resized_std = _skimage_resize(im_std, new_dims, order=interp_order)
            resized_im = resized_std * (im_max - im_min) + im_min
        else:
            # the image is a constant -- avoid divide by 0
            ret = np.empty((new_dims[0], new_dims[1], im.shape[-1]),
                           dtype=np.float32)
            ret.fill(im_min)
            return ret
    else:
        # ndimage interpolates anything but more slowly.
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized_im = _ndimage_zoom(im, scale + (1,), order=interp_order)
    return resized_im.astype(np.float32)


def oversample(images, crop_dims):
    """
    Crop images into the four corners, center, and their mirrored versions.

    Parameters
    ----------
    image : iterable of (H x W x K) ndarrays
    crop_dims : (height, width) tuple for the crops.

    Returns
    -------
    crops : (10*N x H x W x K) ndarray of crops for number of inputs N.
    """
    # Dimensions and center.
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0

    # Make crop coordinates
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([
        -crop_dims / 2.0,
        crop_dims / 2.0
    ])
    crops_ix = np.tile(crops_ix, (2, 1))

    # Extract crops
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1],
                      im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]  # flip for mirrors
    return crops


# -- what Caffe takes from scikit-image and SciPy ---------------------------------------------------------------

def _imread(filename, as_gray=False):
    """skimage.io.imread: the file's pixels (uint8 or uint16), RGB(A) or gray; as_gray gives float64 luminance
    (skimage's rgb2gray weights 0.2125 R + 0.7154 G + 0.0721 B) in [0, 1] for colour files, gray ones as they are."""
    from PIL import Image
    with Image.open(filename) as im:
        if im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode == "LA":
            im = im.convert("RGBA")
        elif im.mode == "1":
            im = im.convert("L")
        arr = np.asarray(im)
    if arr.dtype == np.int32 or arr.dtype == np.int16:   # 16-bit PNGs ("I;16", "I")
        arr = arr.astype(np.uint16)
    if as_gray and arr.ndim == 3:
        rgb = _img_as_float(arr)[..., :3]
        return rgb @ np.array([0.2125, 0.7154, 0.0721])
    return arr


def _img_as_float(img):
    """skimage.img_as_float: integers scaled by their type's maximum, floats as they are (float64)."""
    img = np.asarray(img)
    if img.dtype.kind == "u":
        return img.astype(np.float64) / np.iinfo(img.dtype).max
    if img.dtype.kind == "i":
        return np.maximum(img.astype(np.float64) / np.iinfo(img.dtype).max, -1.0)
    if img.dtype == np.bool_:
        return img.astype(np.float64)
    return img.astype(np.float64) if img.dtype != np.float32 else img


def _linear_weights(n_in, n_out, centres_aligned):
    """Source positions for each output index along one axis, and the (lo, hi, frac) of linear interpolation:
    skimage's warp samples at (i + 0.5) * n_in / n_out - 0.5 (pixel centres aligned); ndimage.zoom (grid_mode
    False) at i * (n_in - 1) / (n_out - 1) (corner pixels aligned)."""
    i = np.arange(n_out, dtype=np.float64)
    if centres_aligned:
        pos = (i + 0.5) * (n_in / n_out) - 0.5
    else:
        pos = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    lo = np.floor(pos).astype(np.int64)
    return pos, lo, pos - lo


def _sample_axis(a, axis, pos, lo, frac, constant_edges):
    """Linear interpolation along `axis`; outside the input: 0 (constant mode) or the edge value (nearest)."""
    n = a.shape[axis]
    hi = lo + 1

    def take(idx):
        inside = (idx >= 0) & (idx < n)
        vals = np.take(a, np.clip(idx, 0, n - 1), axis=axis)
        if constant_edges:
            shape = [1] * a.ndim
            shape[axis] = len(idx)
            vals = vals * inside.reshape(shape)
        return vals

    shape = [1] * a.ndim
    shape[axis] = len(pos)
    f = frac.reshape(shape)
    return take(lo) * (1 - f) + take(hi) * f


def _skimage_resize(image, output_shape, order=1):
    """skimage.transform.resize(image, output_shape, order, mode='constant') of an H x W x K image in [0, 1],
    as the scikit-image Caffe was written for (0.13: warp with _warp_fast per channel, output pixel i sampled
    at (i + 0.5) * n_in / n_out - 0.5, no anti-aliasing, cval 0, bilinear results clipped to the input's range
    and cval). Orders 0 and 1 are supported."""
    image = np.asarray(image, dtype=np.float64)
    out_h, out_w = int(output_shape[0]), int(output_shape[1])
    if order not in (0, 1):
        raise ValueError(f"resize_image: interp_order {order} is not supported (0 or 1)")
    result = image
    for axis, n_out in ((0, out_h), (1, out_w)):
        n_in = result.shape[axis]
        pos, lo, frac = _linear_weights(n_in, n_out, centres_aligned=True)
        if order == 0:
            idx = (np.sign(pos) * np.floor(np.abs(pos) + 0.5)).astype(np.int64)   # C's round()
            inside = (idx >= 0) & (idx < n_in)
            vals = np.take(result, np.clip(idx, 0, n_in - 1), axis=axis)
            shape = [1] * result.ndim
            shape[axis] = n_out
            result = vals * inside.reshape(shape)
        else:
            # bilinear, each corner outside the image reads cval 0 (skimage's get_pixel2d in constant mode)
            result = _sample_axis(result, axis, pos, lo, frac, constant_edges=True)
    return np.clip(result, image.min(), image.max())


def _ndimage_zoom(im, zoom, order=1):
    """scipy.ndimage.zoom(im, zoom, order) for order 0 or 1 (mode 'constant', grid_mode False): output size
    round(n * zoom) per axis, corner pixels aligned."""
    im = np.asarray(im)
    if order not in (0, 1):
        raise ValueError(f"resize_image: interp_order {order} is not supported (0 or 1)")
    result = im.astype(np.float64)
    for axis, z in enumerate(zoom):
        n_in = result.shape[axis]
        n_out = int(round(n_in * z))
        if n_out == n_in:
            continue
        pos, lo, frac = _linear_weights(n_in, n_out, centres_aligned=False)
        if order == 0:
            result = np.take(result, np.clip(np.round(pos).astype(np.int64), 0, n_in - 1), axis=axis)
        else:
            result = _sample_axis(result, axis, pos, lo, frac, constant_edges=False)
    return result
