"""Research workbench: each method is a folder of cached stages wired once for Snakemake and DVC."""
