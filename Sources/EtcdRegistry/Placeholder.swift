// Placeholder: implementation lands with its issue.
