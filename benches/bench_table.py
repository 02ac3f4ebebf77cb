"""Print a Markdown table from a pytest-benchmark JSON file (MB/s and bits/weight)."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    data = json.load(open(path))
    print(
        f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
        f"date: {data['datetime'][:10]}"
    )
    print("| benchmark | MB/s (input, best of rounds) | bits/weight |\n|---|---|---|")
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        print(f"| {b['name']} | {info.get('MB_per_s', '')} | {info.get('bits_per_weight', '')} |")


if __name__ == "__main__":
    main(sys.argv[1])
