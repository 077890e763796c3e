"""Cut the bundled demo data: the complete histories of a seeded random sample of Online Retail
customers (CC BY 4.0, UCI; Chen, Sain and Guo 2012). Run from the repo root:

    python scripts/make_demo_data.py ../shared/data/online-retail/online_retail_2010_2011.csv.gz
"""

import sys

import numpy as np
import pandas as pd

N_CUSTOMERS = 400
SEED = 7
OUT = "src/valuerec/demo_data/online_retail_sample.csv.gz"

src = sys.argv[1]
df = pd.read_csv(src, dtype=str, keep_default_na=False, na_values=[""])
customers = np.array(sorted(df["CustomerID"].dropna().unique()))
pick = np.random.default_rng(SEED).choice(customers, size=N_CUSTOMERS, replace=False)
sample = df[df["CustomerID"].isin(set(pick))]
sample.to_csv(OUT, index=False, compression={"method": "gzip", "mtime": 0})
print(f"{OUT}: {len(sample)} rows, {sample['CustomerID'].nunique()} customers")
