"""Study definitions shipped with h2s-search (the TOML files beside this one)."""
