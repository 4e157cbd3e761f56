"""One lookup table per kind of object (losses, metrics, optimizers, layers).

``get`` turns a name, an instance or a ``{"class_name", "config"}`` dict into an object;
``serialize`` writes that dict for the built-in classes; ``deserialize`` reads it back.
"""


class Registry:
    """Built-in classes of one kind, and the names strings may give.

    Parameters
    ----------
    kind : str
        What the objects are, as the argument that takes them is called ("loss").
    base : type
        Instances of this class pass through ``get`` unchanged.
    classes : iterable of type
        Built-in classes, serialized under their ``__name__``.
    names : dict of str -> callable, optional
        Lower-case string -> factory called with the string as given.
    """

    def __init__(self, kind, base, classes, names=None):
        self.kind, self.base = kind, base
        self.classes = {cls.__name__: cls for cls in classes}
        self.names = dict(names or {})

    def get(self, identifier):
        """An object from a name, an instance of ``base`` or a serialized dict."""
        if isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, str):
            factory = self.names.get(identifier.lower())
            if factory is None:
                raise ValueError(f"{self.kind}: unknown name {identifier!r}, expected one of "
                                 f"{sorted(self.names)} or a {self._base_name}")
            return factory(identifier)
        if isinstance(identifier, dict):
            return self.deserialize(identifier)
        raise TypeError(f"{self.kind}: expected a name such as {min(self.names, default='')!r}, "
                        f"a {self._base_name} or a serialized {self.kind} dict, got "
                        f"{identifier!r:.200}")

    def serialize(self, obj):
        """``{"class_name", "config"}`` of a built-in class's instance; None for others."""
        name = type(obj).__name__
        if type(obj) is not self.classes.get(name):
            return None
        return {"class_name": name, "config": obj.get_config()}

    def deserialize(self, config):
        """The object :meth:`serialize` described (ValueError for unknown classes)."""
        if not isinstance(config, dict) or config.get("class_name") not in self.classes:
            raise ValueError(f"{self.kind} config: expected {{'class_name': one of "
                             f"{sorted(self.classes)}, 'config': {{...}}}}, got {config!r:.200}")
        cls = self.classes[config["class_name"]]
        arguments = dict(config.get("config") or {})
        from_config = getattr(cls, "from_config", None)
        return from_config(arguments) if from_config is not None else cls(**arguments)

    @property
    def _base_name(self):
        return f"{self.base.__module__}.{self.base.__name__}"
