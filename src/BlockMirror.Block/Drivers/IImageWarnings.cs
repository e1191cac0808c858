namespace BlockMirror.Block.Drivers;

/// <summary>A driver that found something worth telling the user while opening (e.g. an image marked corrupt), without refusing to open.</summary>
public interface IImageWarnings
{
    IReadOnlyList<string> Warnings { get; }
}
