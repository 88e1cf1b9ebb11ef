"""The read side: answers built from storage only (documents, serving exports, plots, the HTTP API).

Runs wherever a user asks a question (`latts frontier/best/export/plot/serve`, the notebook); it
reads the latts tables through `latts.storage.Repository`, never starts an engine and never
writes.
"""
