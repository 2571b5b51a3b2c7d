"""Trainer: fine-tuning jobs over JetStream, LoRA adapters with peft, signed bundles, evals."""
