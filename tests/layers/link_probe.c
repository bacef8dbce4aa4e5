/* Linked with the whole archive of one layer and only the layers below it
 * (CMakeLists.txt, "The layers"): a call from a layer to a layer above it
 * leaves an undefined reference, so the build fails. */
int main(void) {
  return 0;
}
