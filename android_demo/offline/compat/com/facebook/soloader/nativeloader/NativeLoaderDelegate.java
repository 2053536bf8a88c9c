package com.facebook.soloader.nativeloader;

/** Offline-build stand-in for soloader's NativeLoaderDelegate (Gradle builds use com.facebook.soloader). */
public interface NativeLoaderDelegate {
    boolean loadLibrary(String shortName, int flags);

    String getLibraryPath(String libName) throws java.io.IOException;

    int getSoSourcesVersion();
}
