"""scmgen's built-in plugins: mechanisms, critics, losses and data sets, registered through the
same entry points (see pyproject.toml) that a third-party package would use."""
