"""The CPU demo (``python -m igrpo_megatron.demo``) and the tiny model / tokenizer factory it and the tests build on."""
