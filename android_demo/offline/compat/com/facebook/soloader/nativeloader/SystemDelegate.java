package com.facebook.soloader.nativeloader;

/** Offline-build stand-in for soloader's SystemDelegate: plain System.loadLibrary. */
public class SystemDelegate implements NativeLoaderDelegate {
    @Override
    public boolean loadLibrary(String shortName, int flags) {
        System.loadLibrary(shortName);
        return true;
    }

    @Override
    public String getLibraryPath(String libName) {
        return null;
    }

    @Override
    public int getSoSourcesVersion() {
        return 0;
    }
}
