namespace BlockMirror.Block.Drivers;

/// <summary>How a backing file name recorded in an image is found on disk.</summary>
public static class BackingPaths
{
    /// <summary>Relative names are relative to the overlay's directory, as QEMU reads them.</summary>
    public static string Resolve(string image, string backing) =>
        Path.IsPathRooted(backing) ? backing : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(image)) ?? ".", backing);
}
