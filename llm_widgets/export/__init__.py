"""Export: figures from the data the widgets show (PNG, SVG, standalone HTML)."""
