"""A tiny Stable-Diffusion-shaped pipeline built from configs (random weights, nothing downloaded), saved in
the folder layout of SD v1 checkpoints: for the `sd:PATH` tests and the generative CLI's."""
from __future__ import annotations

import json
import shutil
import string

import torch

MAX_TOKENS = 48


def tiny_pipeline(folder):
    """A Stable-Diffusion-shaped pipeline with random weights: 8×8 latents, 16×16 images, a character-level
    CLIP tokenizer written as vocab.json + merges.txt (the layout of SD v1 folders)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = folder.parent / "tokenizer-src"
    tok_dir.mkdir()
    chars = string.ascii_lowercase + string.digits + ".,'-_"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_TOKENS}))
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 32), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=16, norm_num_groups=32)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        max_position_embeddings=MAX_TOKENS, bos_token_id=vocab["<|startoftext|>"],
                                        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(folder))
    shutil.rmtree(folder / "tokenizer")  # as SD v1 ships it: vocab.json, merges.txt, tokenizer_config.json
    shutil.copytree(tok_dir, folder / "tokenizer")
    return folder
