"""apps: Gradio and HTTP front-ends built on the workbench API."""
