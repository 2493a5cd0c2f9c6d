"""Forward hooks that decode label indices to words with RETURNN's Vocabulary, as i6 setups do."""

from returnn.datasets.util.vocabulary import Vocabulary


def forward_init_hook(run_ctx, **kwargs):
    run_ctx.vocab = Vocabulary("vocab.txt", unknown_label=None)
    run_ctx.out = open("words.txt", "w")


def forward_step(*, model, data, run_ctx, **kwargs):
    best = model(data["data"]).argmax(1)  # [B, T]
    for tag, labels, length in zip(data["seq_tag"], best.tolist(), data["data:size1"].tolist()):
        run_ctx.out.write("%s %s\n" % (tag, run_ctx.vocab.get_seq_labels(labels[:length])))


def forward_finish_hook(run_ctx, **kwargs):
    run_ctx.out.close()
