"""Forward hooks that dump model outputs to HDF with SimpleHDFWriter, as i6 setups do."""

from returnn.datasets.hdf import SimpleHDFWriter


def forward_init_hook(run_ctx, **kwargs):
    run_ctx.hdf_writer = SimpleHDFWriter("output.hdf", dim=3, ndim=2)


def forward_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"]).permute(0, 2, 1)  # [B, T, 3]
    run_ctx.hdf_writer.insert_batch(logits.cpu().numpy(), data["data:size1"].cpu().numpy(), data["seq_tag"])


def forward_finish_hook(run_ctx, **kwargs):
    run_ctx.hdf_writer.close()
