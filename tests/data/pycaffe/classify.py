"""A pycaffe script as Caffe users write them (Caffe's 00-classification notebook, condensed):
python classify.py DEPLOY WEIGHTS IMAGE [--zero-fc]  prints the class probabilities as JSON."""

import json
import sys

import numpy as np

import caffe

model_def, model_weights, image_file = sys.argv[1:4]

caffe.set_mode_cpu()
net = caffe.Net(model_def,      # defines the structure of the model
                model_weights,  # contains the trained weights
                caffe.TEST)     # use test mode (e.g., don't perform dropout)

mu = np.array([104.0, 117.0, 123.0])  # BGR mean pixel values

# create transformer for the input called 'data'
transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
transformer.set_transpose('data', (2, 0, 1))     # move image channels to outermost dimension
transformer.set_mean('data', mu)                 # subtract the dataset-mean value in each channel
transformer.set_raw_scale('data', 255)           # rescale from [0, 1] to [0, 255]
transformer.set_channel_swap('data', (2, 1, 0))  # swap channels from RGB to BGR

net.blobs['data'].reshape(1, 3, 8, 8)
image = caffe.io.load_image(image_file)
transformed_image = transformer.preprocess('data', image)
net.blobs['data'].data[...] = transformed_image

if '--zero-fc' in sys.argv:
    net.params['fc'][0].data[...] = 0
    net.params['fc'][1].data[...] = np.arange(5)

output = net.forward()
output_prob = output['prob'][0]  # the output probability vector for the first image in the batch
print(json.dumps({'prob': output_prob.tolist(), 'argmax': int(output_prob.argmax()),
                  'inputs': net.inputs, 'outputs': net.outputs,
                  'layers': [layer.type for layer in net.layers]}))
