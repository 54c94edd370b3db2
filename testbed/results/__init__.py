"""What a run shows and leaves: terminal output and the live view, tables, files, the capture analysis,
plots and the HTML report."""
