namespace BlockMirror.Block.Qapi;

/// <summary>A branch of a flat union: the members added when the tag member's value is <see cref="Case"/>.</summary>
public sealed record QapiVariant(string Case, QapiObject Type);
