"""Python layers written as Caffe users write them (Caffe's examples/pycaffe/layers/pyloss.py style)."""

import ast

import numpy as np

import caffe


class EuclideanLossLayer(caffe.Layer):
    """Half the mean squared distance of two bottoms over the batch, like Caffe's EuclideanLoss."""

    def setup(self, bottom, top):
        # check input pair
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        # check input dimensions match
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        # difference is shape of inputs
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        # loss output is scalar
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            if i == 0:
                sign = 1
            else:
                sign = -1
            # top[0].diff holds the loss weight
            bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class LinearDataLayer(caffe.Layer):
    """Random inputs and their targets under a fixed linear map, drawn anew at every forward."""

    def setup(self, bottom, top):
        if len(top) != 2:
            raise Exception("Need two tops: data and label.")
        params = ast.literal_eval(self.param_str)
        self.batch_size = params['batch_size']
        self.dim = params['dim']
        self.rng = np.random.RandomState(params.get('seed', 0))
        self.w = np.linspace(-1, 1, self.dim * 2).reshape(2, self.dim).astype(np.float32)
        top[0].reshape(self.batch_size, self.dim)
        top[1].reshape(self.batch_size, 2)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        x = self.rng.randn(self.batch_size, self.dim).astype(np.float32)
        top[0].data[...] = x
        top[1].data[...] = x.dot(self.w.T)

    def backward(self, top, propagate_down, bottom):
        pass


class ScaleShiftLayer(caffe.Layer):
    """y = a * x + b with learnable scalars a (blob 0) and b (blob 1)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.0
        self.blobs[1].data[...] = 0.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data + self.blobs[1].data[0]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = np.sum(top[0].diff * bottom[0].data)
        self.blobs[1].diff[0] = np.sum(top[0].diff)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff
