"""Tables and figures from result rows (the paper's Tables A / B format)."""
