"""Developer tools behind the Makefile (`make summary`, `ui`, `serve`, `render`).

Not shipped in the Airflow image (which copies dags/ only): they start local servers, read the embedded
platform's stores and render pods for review.
"""
