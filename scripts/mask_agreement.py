#!/usr/bin/env python3
"""How much two or more channel masks agree, against chance.

    python3 scripts/mask_agreement.py A/masks.json B/masks.json [C/masks.json ...]

Reads masks files written by `sepprune prune --save-masks` or `compress` (the report's
`masks.json`: `groups` -> {key, size, keep}), and prints for every pair the Jaccard index of
the kept channels over all groups, `sum |A_g & B_g| / sum |A_g | B_g|`, beside what two
independent uniform draws with the same kept counts would give on average
(`E|A & B| = |A| |B| / n` per group of n channels). A learner that finds structure gives
masks that agree well above chance across seeds; masks near chance say the learner's
choice among channels is mostly its noise.
"""
import itertools
import json
import sys


def load(path):
    with open(path) as f:
        groups = json.load(f)["groups"]
    return {g["key"]: (g["size"], set(g["keep"])) for g in groups.values()}


def jaccard(a, b):
    keys = sorted(set(a) & set(b))
    if not keys:
        raise SystemExit("the masks share no group")
    inter = union = chance_inter = chance_union = 0.0
    for k in keys:
        (n, ka), (_, kb) = a[k], b[k]
        inter += len(ka & kb)
        union += len(ka | kb)
        e = len(ka) * len(kb) / n
        chance_inter += e
        chance_union += len(ka) + len(kb) - e
    return inter / union, chance_inter / chance_union, len(keys)


def main():
    paths = sys.argv[1:]
    if len(paths) < 2:
        raise SystemExit(__doc__)
    masks = [load(p) for p in paths]
    print("| A | B | groups | Jaccard | chance |")
    print("|---|---|---|---|---|")
    for (i, a), (j, b) in itertools.combinations(enumerate(masks), 2):
        jac, chance, n = jaccard(a, b)
        print(f"| {paths[i]} | {paths[j]} | {n} | {jac:.3f} | {chance:.3f} |")


if __name__ == "__main__":
    main()
