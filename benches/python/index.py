"""hnswlib side of benches/index.rs: same vectors, same M / ef_construction, 2 build threads,
1 query thread. Needs: numpy==2.4.6, hnswlib==0.8.0.

Usage: index.py DATA.npy QUERIES.npy TRUTH.npy M EF_CONSTRUCTION EF[,EF...]
TRUTH holds the exact top-10 ids per query (float32). Prints one JSON object on stdout.
"""
import json
import sys
import time

import hnswlib
import numpy as np

data = np.load(sys.argv[1])
queries = np.load(sys.argv[2])
truth = np.load(sys.argv[3]).astype(np.int64)
m, efc = int(sys.argv[4]), int(sys.argv[5])
efs = [int(e) for e in sys.argv[6].split(",")]
k = truth.shape[1]

index = hnswlib.Index(space="ip", dim=data.shape[1])  # unit vectors: inner product = cosine
index.init_index(max_elements=len(data), ef_construction=efc, M=m, random_seed=100)
index.set_num_threads(2)
t = time.perf_counter()
index.add_items(data, np.arange(len(data)))
build_s = time.perf_counter() - t

index.set_num_threads(1)
rows = []
for ef in efs:
    index.set_ef(max(ef, k))
    t = time.perf_counter()
    labels, _ = index.knn_query(queries, k=k, num_threads=1)
    dt = time.perf_counter() - t
    hits = sum(len(set(labels[i]) & set(truth[i])) for i in range(len(queries)))
    rows.append({"ef": ef, "recall": hits / truth.size, "qps": len(queries) / dt})
print(json.dumps({"hnswlib": hnswlib.__version__ if hasattr(hnswlib, "__version__") else "0.8.0",
                  "build_s": build_s, "rows": rows}))
