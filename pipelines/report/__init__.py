"""From tables to what a reader sees: REPORT.md and its sections, the figures, the HTML report's landing text,
tables and browser check, and the TensorBoard export."""
