"""From probe logs to the study's numbers and figures: effectivity, retainability, decay fits, plots."""
