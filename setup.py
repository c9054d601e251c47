from setuptools import find_packages, setup

setup(
    name="latent25d",
    version="0.1.0",
    description="Caffe-style layered pipeline on PyTorch for 3D hand pose by latent 2.5D heatmap regression (RHD)",
    packages=find_packages(include=["netdef", "netdef.*", "layers", "layers.*", "nets", "nets.*", "caffe", "caffe.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "numpy",
        "opencv-python-headless",
        "h5py",
        "lmdb",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "hypothesis", "onnx", "onnxruntime"]},
    entry_points={"console_scripts": ["run-net = nets.cli:main", "draw-net = nets.draw:main"]},
)
