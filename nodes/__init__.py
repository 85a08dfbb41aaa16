"""Built-in nodes, one module per family (installed as `nodegraph.nodes`).

Every module in this package is imported by `Registry.load_builtins`, and every public Node
subclass defined in it is registered under its class name (or its `node_name`). Adding a node
family is adding a module here; nothing else needs editing. Helper base classes can be hidden
with a leading underscore or `abstract = True`.
"""
