"""Server-rendered review pages: Jinja2 templates and a little vanilla JS, no build step."""
