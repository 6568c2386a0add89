"""Packaging for videoldm (Python 3.11 to 3.13, JAX 0.10 to 0.11)."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",
    "jaxlib>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "einops>=0.8,<0.9",
    "ml-collections>=1.1,<2",
    "tensorflow-datasets>=4.9.10,<5",
    "tensorflow-cpu>=2.21,<2.22",  # clu's metric writers and tfds need TensorFlow.
    "tensorboard>=2.21,<2.22",
    "clu>=0.0.12,<0.1",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8,<0.9",  # The latent cache's shards (videoldm/data/latent_cache.py).
    "etils[epath]>=1.12,<2",  # Local and gs:// paths alike (video sources, resume checks).
    "numpy>=2.0,<3",
    "absl-py>=2.1,<3",
    "safetensors>=0.8,<0.9",
    "scikit-learn>=1.9,<2",  # bundled handwritten digits for moving_digits.
    "imageio>=2.38,<3",
    "imageio-ffmpeg>=0.8,<0.9",
    "av>=17,<19",  # PyAV: decoding video clips on the fly (videoldm/data/video_decode.py).
    "Pillow>=11,<14",
    "scipy>=1.17,<2",
    "regex>=2024.5",  # the CLIP tokenizer's pre-tokenisation pattern.
]

TEST_CORE = ["pytest>=9,<10", "pytest-xdist>=3.8,<4"]

EXTRAS_REQUIRE = {
    # The tests that need no PyTorch reference library (any supported Python).
    "test-core": TEST_CORE,
    # Reference libraries used only by parity tests. torch is pinned exactly:
    # a looser pin pulls a multi-GB CUDA build.
    "test": TEST_CORE + [
        "torch==2.13.0",
        "diffusers>=0.42,<0.43",
        "transformers>=5.24,<6",
        # Notebook tests execute colabs/*.ipynb through a real Jupyter kernel.
        "nbclient>=0.10,<0.12",
        "nbformat>=5.10,<6",
        "ipykernel>=6.29,<8",
    ],
    "gpu": ["jax[cuda12]>=0.10.2,<0.12"],
    "tpu": ["jax[tpu]>=0.10.2,<0.12"],
}

setuptools.setup(
    name="videoldm",
    version="0.1.0",
    description="Video Latent Diffusion Models (Align your Latents) in JAX/Flax.",
    python_requires=">=3.11,<3.14",
    packages=setuptools.find_packages(include=["videoldm", "videoldm.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
