"""Every argument name GPT-NeoX accepts in its YAML files.

GPT-NeoX's configs must load into neox as they are. A key on this list that
neox's schema has no field for is accepted and reported in one warning (see
``neoxcli.config.loader``); a key on no list at all is a typo and an error.

The names come from GPT-NeoX's argument dataclasses (``megatron/neox_arguments/
neox_args.py`` and ``deepspeed_args.py``), current ones plus a few that older
releases had (``gas``, ``mlp_type``, ``save_iters``, ``save_interval``), so older config files
load too. Names are spelled with ``_``; the loader turns ``-`` into ``_`` first.
"""

from __future__ import annotations

# NeoXArgsParallelism
_PARALLELISM = """
pipe_parallel_size model_parallel_size pipe_partition_method world_size is_pipe_parallel
sequence_parallel expert_interval
"""

# NeoXArgsModel (with the Transformer Engine and Mamba switches of later releases)
_MODEL = """
precision num_layers hidden_size intermediate_size mlp_multiple_of expansion_factor
num_attention_heads num_kv_heads seq_length sliding_window_width max_position_embeddings
norm layernorm_fusion rmsnorm_fusion use_qk_layernorm layernorm_epsilon rms_norm_epsilon
scalenorm_epsilon pos_emb rpe_num_buckets rpe_max_distance opt_pos_emb_offset no_weight_tying
attention_config sparsity_config num_unique_layers param_sharing_style make_vocab_size_divisible_by
activation use_flashattn_swiglu scaled_upper_triang_masked_softmax_fusion scaled_masked_softmax_fusion
bias_gelu_fusion bias_dropout_fusion rope_fusion fp16_lm_cross_entropy init_method_std
apply_query_key_layer_scaling use_cpu_initialization attention_softmax_in_fp32 rotary_pct
rotary_emb_base rotary_save_freqs_buffer init_method output_layer_init_method gmlp_attn_dim
gpt_j_residual gpt_j_tied use_bias_in_norms use_bias_in_attn_linear use_bias_in_mlp mlp_type
soft_prompt_tuning mamba_selective_scan_fusion mamba_causal_conv_fusion mamba_inner_func_fusion
mamba_selective_fp32_params mamba_use_bias_in_conv mamba_use_bias_in_linears
output_layer_parallelism dim_att head_size ffn_dim
te_columnparallel te_rowparallel te_layernorm_mlp te_mha te_fp8_format te_fp8_wgrad
te_fp8_amax_history_len te_fp8_amax_compute_algo te_fp8_margin te_fp8_mha
"""

# NeoXArgsOptimizer and NeoXArgsLRScheduler
_OPTIMIZER = """
optimizer_type use_bnb_optimizer zero_stage zero_reduce_scatter zero_contiguous_gradients
zero_reduce_bucket_size zero_allgather_bucket_size lr
lr_decay_style lr_decay_iters lr_decay_fraction min_lr warmup override_lr_scheduler
use_checkpoint_lr_scheduler
"""

# NeoXArgsLogging
_LOGGING = """
use_wandb wandb_group wandb_team wandb_project wandb_host wandb_init_all_ranks git_hash log_dir
tensorboard_writer tensorboard_dir use_comet comet_workspace comet_project comet_experiment_name
comet_tags comet_others comet_experiment log_interval log_grad_pct_zeros log_param_norm
log_grad_norm log_optimizer_states log_gradient_noise_scale gradient_noise_scale_n_batches
gradient_noise_scale_cpu_offload memory_profiling memory_profiling_path profile
profile_step_start profile_step_stop
"""

# NeoXArgsOther
_OTHER = """
distributed_backend local_rank rank lazy_mpu_init short_seq_prob eod_mask_loss adlr_autoresume
adlr_autoresume_object adlr_autoresume_interval seed onnx_safe deepscale deepscale_config
deepspeed_mpi deepspeed_slurm user_script iteration do_train do_valid do_test save_iters
save_interval
global_num_gpus
"""

# NeoXArgsTokenizer
_TOKENIZER = """
tokenizer_type padded_vocab_size tokenizer
"""

# NeoXArgsTraining
_TRAINING = """
data_path use_shared_fs train_data_paths train_label_data_paths train_reward_data_paths
test_data_paths test_label_data_paths test_reward_data_paths valid_data_paths
valid_label_data_paths valid_reward_data_paths label_data_paths
pos_train_data_paths neg_train_data_paths pos_train_label_data_paths neg_train_label_data_paths
pos_valid_data_paths neg_valid_data_paths pos_valid_label_data_paths neg_valid_label_data_paths
pos_test_data_paths neg_test_data_paths pos_test_label_data_paths neg_test_label_data_paths
train_data_weights valid_data_weights test_data_weights weight_by_num_documents
weighted_sampler_alpha data_impl pack_impl dataset_impl train_impl dpo_fp32 dpo_reference_free
dpo_beta kto_fp32 kto_desirable_weight kto_undesirable_weight z_loss kto_beta allow_chopped
mmap_warmup save s3_path s3_chunk_size config_files load checkpoint_validation_with_forward_pass
checkpoint_scale checkpoint_factor extra_save_iters no_save_optim no_save_rng no_load_optim
no_load_rng finetune batch_size train_iters train_epochs eval_iters keep_last_n_checkpoints
eval_interval split vocab_file merge_file num_workers exit_interval attention_dropout
hidden_dropout weight_decay checkpoint_activations checkpoint_num_layers
deepspeed_activation_checkpointing contiguous_checkpointing checkpoint_in_cpu
synchronize_each_layer profile_backward partition_activations gas clip_grad hysteresis
dynamic_loss_scale loss_scale loss_scale_window min_scale char_level_ppl use_mup coord_check
save_base_shapes base_shapes_file mup_init_scale mup_attn_temp mup_output_temp
mup_embedding_mult mup_rp_embedding_mult mup_width_scale
serve_model_weights online_dataserver_ips online_dataserver_ports reinforce_leave_one_out
"""

# NeoXArgsTextgen (generation, evaluation and mixture-of-experts settings)
_TEXTGEN = """
text_gen_type precompute_model_name temperature top_p top_k return_logits maximum_tokens
prompt_end sample_input_file sample_output_file num_samples recompute eval_results_prefix
eval_tasks moe_top_k use_tutel moe_num_experts moe_loss_coeff moe_train_capacity_factor
moe_eval_capacity_factor moe_min_capacity moe_token_dropping create_moe_param_group
moe_use_residual moe_expert_parallel_size moe_type moe_glu moe_lbl_in_fp32 moe_jitter_eps
enable_expert_tensor_parallelism
"""

# NeoXArgsDeepspeedConfig: passed through to DeepSpeed's JSON config
_DEEPSPEED_CONFIG = """
deepspeed train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps optimizer
scheduler fp32_allreduce prescale_gradients gradient_predivide_factor sparse_gradients fp16 bf16
amp gradient_clipping zero_optimization curriculum_learning curriculum_seqlen steps_per_print
wall_clock_breakdown dump_state flops_profiler communication_data_type autotuning
activation_checkpointing sparse_attention data_efficiency tensorboard wandb csv_monitor
elasticity comms_logger compression_training checkpoint data_types deepspeed_extra_args
load_universal
"""

# NeoXArgsDeepspeedRunner: command-line arguments of the DeepSpeed launcher
_DEEPSPEED_RUNNER = """
hostfile include exclude num_nodes num_gpus master_port master_addr launcher force_multi
detect_nvlink_pairs autotuning_run no_ssh_check comment account
"""

GPT_NEOX_KEYS: frozenset[str] = frozenset(
    " ".join(
        (
            _PARALLELISM,
            _MODEL,
            _OPTIMIZER,
            _LOGGING,
            _OTHER,
            _TOKENIZER,
            _TRAINING,
            _TEXTGEN,
            _DEEPSPEED_CONFIG,
            _DEEPSPEED_RUNNER,
        )
    ).split()
)
"""All GPT-NeoX argument names, ``_``-spelled."""
